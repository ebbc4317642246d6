"""Win rate and length-controlled win rate: a length-loving judge on replies of equal quality gives a raw
win rate far from ½ and an LC win rate near ½; LC is antisymmetric; intervals are seeded."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from prefopt.judge import Verdict, build_judge
from prefopt.judge.winrate import fit_logistic, lc_win_rate, win_rate, win_rate_from_verdicts


def length_biased_replies(n: int, shift: float = 4.0, seed: int = 0):
    """Replies of equal quality (filler of one letter), the policy's longer by ``shift`` characters on
    average: lengths reference U(5, 30), policy = reference + N(shift, 4²)."""
    rng = random.Random(seed)
    prompts, policy, reference = [], [], []
    for i in range(n):
        lr = rng.randint(5, 30)
        lp = max(1, lr + round(rng.gauss(shift, 4)))
        prompts.append(f"prompt {i}")
        reference.append("x" * lr)
        policy.append("y" * lp)
    return prompts, policy, reference


def test_length_loving_judge_raw_far_from_half_lc_near_half():
    judge = build_judge({"type": "callable", "function": "judge_helpers:prefers_longer"})
    prompts, policy, reference = length_biased_replies(n=2000)
    res, verdicts = win_rate(judge, prompts, policy, reference, n_boot=200, seed=0)
    assert res.n == 2000 and res.wins + res.ties + res.losses == 2000 and len(verdicts) == 2000
    assert res.win_rate > 0.70  # the judge rewards length, the policy is longer
    # n = 2000 keeps the sampling spread of LC near ±0.03 (8 data seeds: 0.46-0.53)
    assert abs(res.lc_win_rate - 0.5) < 0.05
    assert res.lc_win_rate_ci[0] < 0.5 < res.lc_win_rate_ci[1]
    assert res.win_rate_ci[0] > 0.65
    assert res.length_coef > 1.0 and res.mean_length_delta > 3.0
    assert res.judge == "callable:judge_helpers:prefers_longer"


def test_length_blind_judge_lc_equals_raw_about():
    judge = build_judge({"type": "callable", "function": "judge_helpers:length_blind"})
    prompts, policy, reference = length_biased_replies(n=2000)
    res, _ = win_rate(judge, prompts, policy, reference, n_boot=0)
    assert abs(res.win_rate - 0.5) < 0.07
    assert abs(res.lc_win_rate - res.win_rate) < 0.05
    assert abs(res.length_coef) < 0.5


def test_lc_is_antisymmetric_in_policy_and_reference():
    judge = build_judge({"type": "callable", "function": "judge_helpers:prefers_longer"})
    prompts, policy, reference = length_biased_replies(n=200, seed=1)
    ab, _ = win_rate(judge, prompts, policy, reference, n_boot=0)
    ba, _ = win_rate(judge, prompts, reference, policy, n_boot=0)
    assert ab.win_rate + ba.win_rate == pytest.approx(1.0)
    assert ab.lc_win_rate + ba.lc_win_rate == pytest.approx(1.0, abs=1e-9)


def test_ties_count_half_and_no_verdicts_are_left_out_and_counted():
    verdicts = [Verdict("a"), Verdict("tie"), Verdict("b"), Verdict(None, "inconsistent"), "a", None]
    res = win_rate_from_verdicts(verdicts, [3, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3], n_boot=0)
    assert (res.n, res.wins, res.ties, res.losses) == (4, 2, 1, 1)
    assert res.no_verdict == {"inconsistent": 1, "failed": 1}
    assert res.win_rate == pytest.approx(2.5 / 4)
    # with no length difference at all the LC fit has only its intercept: σ(θ₀) = mean outcome
    assert res.lc_win_rate == pytest.approx(2.5 / 4, abs=1e-3)


def test_bootstrap_is_seeded():
    judge = build_judge({"type": "callable", "function": "judge_helpers:prefers_longer"})
    prompts, policy, reference = length_biased_replies(n=150)
    r1, _ = win_rate(judge, prompts, policy, reference, n_boot=200, seed=3)
    r2, _ = win_rate(judge, prompts, policy, reference, n_boot=200, seed=3)
    r3, _ = win_rate(judge, prompts, policy, reference, n_boot=200, seed=4)
    assert r1.as_dict() == r2.as_dict()
    assert r1.lc_win_rate_ci != r3.lc_win_rate_ci
    assert r1.win_rate_ci[0] <= r1.win_rate <= r1.win_rate_ci[1]


def test_token_lengths_can_be_given():
    judge = build_judge({"type": "callable", "function": "judge_helpers:length"})
    res, _ = win_rate(judge, ["p", "q"], ["aaa", "b"], ["a", "bbb"], lengths=([10, 1], [1, 10]), n_boot=0)
    assert res.mean_length_delta == pytest.approx(0.0)  # (9 + -9) / 2, from the given lengths


def test_logistic_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20000)
    y = (rng.uniform(size=x.size) < 1 / (1 + np.exp(-(0.4 + 1.5 * x)))).astype(float)
    t0, t1 = fit_logistic(x, y)
    assert t0 == pytest.approx(0.4, abs=0.06) and t1 == pytest.approx(1.5, abs=0.1)


def test_fully_separated_verdicts_stay_finite():
    lc, coef = lc_win_rate([1.0, 1.0, 0.0, 0.0], [5.0, 3.0, -2.0, -4.0])
    assert math.isfinite(lc) and math.isfinite(coef) and coef > 0
