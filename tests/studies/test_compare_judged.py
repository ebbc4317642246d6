"""prefopt compare with ``evaluation.judge:``: each point's win rate against the reference in the table."""

from __future__ import annotations

import pytest

from prefopt.core.errors import PrefoptError
from prefopt.studies.compare.tables import win_rate_cell
from prefopt.studies.measure import CompareEvaluation, WorldEvaluator

TRUE_REWARD = {"type": "callable", "function": "prefopt.world:TASKS.arith.reward", "name": "true-reward"}


@pytest.fixture(scope="module")
def evaluator(one_torch_thread):
    settings = CompareEvaluation(num_prompts=12, samples_per_prompt=2, pref_prompts=0, judge=TRUE_REWARD)
    return WorldEvaluator.for_task("arith", settings)


def test_the_reference_against_itself_ties_every_pair(evaluator):
    out = evaluator(evaluator.reference)
    detail = out["win_rate_detail"]
    assert detail["n"] == 24 and detail["ties"] == 24  # same seed: sample i equals sample i
    assert out["win_rate"] == pytest.approx(0.5)
    assert win_rate_cell(out).startswith("0.5")


def test_a_worse_policy_loses(evaluator):
    import copy

    import torch

    worse = copy.deepcopy(evaluator.reference)
    with torch.no_grad():
        for p in worse.parameters():
            p.add_(torch.randn_like(p) * 0.5, alpha=1.0)
    out = evaluator(worse)
    assert out["win_rate"] < 0.5 and out["win_rate_detail"]["losses"] > out["win_rate_detail"]["wins"]


def test_without_a_judge_no_win_rate_is_measured():
    assert CompareEvaluation().judge is None
    assert win_rate_cell({}) == "—"


def test_an_unknown_judge_type_is_refused_naming_the_key():
    with pytest.raises(PrefoptError) as err:
        WorldEvaluator.for_task(
            "arith", CompareEvaluation(num_prompts=2, pref_prompts=0, judge={"type": "oracle"})
        )
    assert "evaluation.judge" in str(err.value)
