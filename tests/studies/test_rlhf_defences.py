"""Defences of the RLHF baseline against reward over-optimisation (prefopt/studies/rlhf.py): a reward-model
ensemble, a length penalty and a KL budget — their fields, splits, aggregation, the budget's stop and the
labels that set defended points apart in compare's table and frontier."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from prefopt.config.schema import validate
from prefopt.core.errors import PrefoptError
from prefopt.judge.ensemble import combine_scores
from prefopt.judge.length import reply_length
from prefopt.model.loading import load_tokenizer
from prefopt.studies.rlhf import (
    EnsembleRewardScorer,
    LengthPenalisedReward,
    RLHFSection,
    SequenceKLCallback,
    calibration_sequences,
    defence_label,
    kl_budget_callback,
    kl_budget_record,
    member_rows,
    standardisation,
)
from prefopt.training.health import RLHF_KL


# --------------------------------------------------------------------------------------------- fields
def test_defence_fields_parse_with_defaults():
    s = validate(
        RLHFSection,
        {
            "reward_model": {"ensemble": {"members": 4}},
            "policy": {"length_penalty": 0.05, "kl_budget": 2.0},
        },
        "rlhf",
    )
    ens = s.reward_model.ensemble
    assert (ens.members, ens.split, ens.combine, ens.k) == (4, "full", "mean_minus_std", 1.0)
    assert s.policy.length_penalty == 0.05 and s.policy.kl_budget == 2.0
    plain = validate(RLHFSection, {}, "rlhf")
    assert plain.reward_model.ensemble is None and plain.policy.length_penalty == 0.0
    assert plain.policy.kl_budget is None


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"reward_model": {"ensemble": {"members": 1}}}, ["reward_model.ensemble.members", "2"]),
        ({"reward_model": {"ensemble": {"members": 4, "split": "random"}}}, ["split", "bootstrap"]),
        ({"reward_model": {"ensemble": {"combine": "weighted_sum"}}}, ["combine", "mean_minus_std"]),
        ({"reward_model": {"ensemble": {"k": -1}}}, ["ensemble.k"]),
        ({"reward_model": {"ensemble": {"memebrs": 4}}}, ["memebrs", "members"]),
        ({"policy": {"length_penalty": -0.1}}, ["policy.length_penalty"]),
        ({"policy": {"kl_budget": 0}}, ["policy.kl_budget"]),
    ],
)
def test_bad_defence_values_are_refused_naming_the_field(raw, words):
    with pytest.raises(PrefoptError) as err:
        validate(RLHFSection, raw, "sweep.yaml: rlhf")
    text = str(err.value)
    assert "rlhf" in text
    for w in words:
        assert w in text, (w, text)


# --------------------------------------------------------------------------------------------- splits
def test_bootstrap_rows_are_seeded_reproducible_and_differ_per_member():
    a = member_rows(200, 4, "bootstrap", seed=42)
    assert a == member_rows(200, 4, "bootstrap", seed=42)
    assert a != member_rows(200, 4, "bootstrap", seed=1)
    assert all(len(m) == 200 and all(0 <= i < 200 for i in m) for m in a)
    assert len({tuple(m) for m in a}) == 4  # each member its own resample
    for m in a:  # with replacement: about 1 − 1/e of the rows are distinct
        assert 0.55 < len(set(m)) / 200 < 0.72


def test_disjoint_rows_cover_every_row_exactly_once():
    parts = member_rows(203, 4, "disjoint", seed=42)
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(203))  # every row once, none twice
    assert sorted(len(p) for p in parts) == [50, 51, 51, 51]
    assert parts == member_rows(203, 4, "disjoint", seed=42)
    assert parts != member_rows(203, 4, "disjoint", seed=7)
    assert parts[0] != list(range(0, 203, 4))  # shuffled before being dealt


def test_full_split_gives_every_member_every_row():
    assert member_rows(5, 4, "full", seed=42) == [list(range(5))] * 4
    assert member_rows(3, 4, "full", seed=0) == [[0, 1, 2]] * 4  # nothing is split, so few rows are fine


def test_too_few_rows_for_the_members_is_a_clear_error():
    with pytest.raises(PrefoptError, match="cannot be split into 4 reward models"):
        member_rows(3, 4, "disjoint", seed=0)


# --------------------------------------------------------------------------------------------- aggregate
class _Fixed:
    """A fake member scorer: a fixed score per sequence (its first id), shifted by ``offset``."""

    def __init__(self, table):
        self.table = table
        self.seen = []

    def score_ids(self, sequences):
        self.seen.append(sequences)
        return [self.table[s[0]] for s in sequences]

    def score_text(self, prompts, completions):
        return [self.table[int(c)] for c in completions]

    def sequences(self, prompts, completion_ids):
        return [list(c) for c in completion_ids]

    def text_sequences(self, prompts, completions):
        return [[int(c)] for c in completions]


@pytest.mark.parametrize("combine", ["mean_minus_std", "min", "mean"])
def test_ensemble_scorer_is_combine_scores_of_its_members(combine):
    members = [_Fixed({0: 1.0, 1: 0.0}), _Fixed({0: 1.0, 1: 2.0}), _Fixed({0: 1.0, 1: 1.0})]
    ens = EnsembleRewardScorer(members, combine, k=1.5)
    got = ens(prompts=["p", "q"], completions=["a", "b"], completion_ids=[[0], [1]])
    want = [combine_scores([1.0, 1.0, 1.0], combine, k=1.5), combine_scores([0.0, 2.0, 1.0], combine, k=1.5)]
    assert got == pytest.approx(want)
    assert got[0] == pytest.approx(1.0)  # members agree: no penalty
    if combine == "mean_minus_std":  # they disagree on 1: mean 1 − 1.5 · std sqrt(2/3)
        assert got[1] == pytest.approx(1.0 - 1.5 * math.sqrt(2 / 3))
    if combine == "min":
        assert got[1] == 0.0
    assert all(m.seen == [[[0], [1]]] for m in members)  # every member scores the same sequences
    assert ens.score_text(["p"], ["1"]) == pytest.approx([want[1]])
    assert ens.__name__ == "reward_model"  # TRL logs rewards/reward_model/mean


def test_standardised_members_differing_only_in_offset_and_scale_agree():
    """Bradley-Terry rewards have an arbitrary offset and scale per model. Two members that rank every reply
    the same but on different scales: raw, mean − std penalises every reply by their offset gap; standardised
    on calibration replies, they agree exactly, so there is no penalty and the score is the z-score."""
    base = {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}
    a = _Fixed(base)
    b = _Fixed({i: 10.0 + 5.0 * v for i, v in base.items()})  # same ranking, offset 10, scale 5
    calib = [[i] for i in base]
    raw = EnsembleRewardScorer([a, b], "mean_minus_std")
    norm = EnsembleRewardScorer([_Fixed(base), _Fixed(b.table)], "mean_minus_std", calibration=calib)
    ids = [[1], [3]]
    # raw: the std of (1, 15) and (3, 25) is the offset/scale gap, not disagreement
    assert raw(prompts=["p", "q"], completions=["1", "3"], completion_ids=ids) == pytest.approx([1.0, 3.0])
    z = [(v - 1.5) / math.sqrt(1.25) for v in (1.0, 3.0)]  # mean 1.5, population std sqrt(1.25)
    assert norm(prompts=["p", "q"], completions=["1", "3"], completion_ids=ids) == pytest.approx(z)
    flat = [x for pair in norm.standardise for x in pair]
    assert flat == pytest.approx([1.5, math.sqrt(1.25), 17.5, 5 * math.sqrt(1.25)])


def test_standardisation_of_constant_scores_keeps_them_finite():
    assert standardisation([2.0, 2.0, 2.0]) == (2.0, 1.0)


def test_calibration_sequences_are_a_seeded_sample_of_both_replies():
    from datasets import Dataset

    ds = Dataset.from_dict(
        {
            "prompt_ids": [[1, i] for i in range(10)],
            "chosen_ids": [[7] for _ in range(10)],
            "rejected_ids": [[8] for _ in range(10)],
        }
    )
    seqs = calibration_sequences(ds, n=4, seed=3)
    assert len(seqs) == 8 and seqs == calibration_sequences(ds, n=4, seed=3)
    assert [s[-1] for s in seqs] == [7, 8] * 4  # each pair's chosen then rejected, prompt first
    assert calibration_sequences(ds, n=4, seed=4) != seqs


def test_ensemble_accuracies_score_each_member_once_and_agree_with_scoring_each_alone():
    """Held-out pair accuracy of every member and of the aggregate, from one scoring of the chosen and of
    the rejected replies by each member: the same numbers as reward_model_accuracy on each alone."""
    from prefopt.studies.rlhf import ensemble_accuracies, reward_model_accuracy

    pairs = [{"prompt": "p", "chosen": str(c), "rejected": str(r)} for c, r in ((0, 1), (2, 3), (4, 5))]
    tables = [
        {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0, 4: 0.0, 5: 1.0},  # 2 of 3 right
        {0: 0.0, 1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0, 5: 1.0},  # 1 of 3
        {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0, 4: 1.0, 5: 0.0},  # 3 of 3
    ]
    members = [_Fixed(t) for t in tables]
    ens = EnsembleRewardScorer(members, "mean")
    got = ensemble_accuracies(ens, pairs)
    assert all(len(m.seen) == 2 for m in members)  # chosen once, rejected once
    assert got["members"] == pytest.approx([2 / 3, 1 / 3, 1.0])
    assert got["members"] == pytest.approx([reward_model_accuracy(_Fixed(t), pairs) for t in tables])
    assert got["aggregate"] == pytest.approx(
        reward_model_accuracy(EnsembleRewardScorer([_Fixed(t) for t in tables], "mean"), pairs)
    )
    assert got["aggregate"] == pytest.approx(2 / 3)  # means: (2/3, 1/3), (1, 0), (1/3, 2/3)
    assert ensemble_accuracies(ens, []) == {"members": [None] * 3, "aggregate": None}


def test_ensemble_needs_two_members():
    with pytest.raises(ValueError):
        EnsembleRewardScorer([_Fixed({})])


def test_length_penalty_subtracts_alpha_per_completion_token_as_online_does():
    tok = load_tokenizer("builtin:tiny-arith")

    def reward(prompts=None, completions=None, completion_ids=None, **_):
        return [1.0, None, 2.0]

    pen = LengthPenalisedReward(reward, 0.25, tok)
    replies = ["4", "12", "123456"]
    got = pen(prompts=["a", "b", "c"], completions=replies, completion_ids=[[1], [2], [3]])
    n = [reply_length(r, tok) for r in replies]
    assert n[2] > n[0] >= 1
    assert got == [1.0 - 0.25 * n[0], None, 2.0 - 0.25 * n[2]]


# --------------------------------------------------------------------------------------------- KL budget
def _log_steps(callbacks, kls, mean_length=4.0):
    """Feed one TRL-style log per step (per-token ``kl``, ``completions/mean_length``) until a stop."""
    state, control = TrainerState(), TrainerControl()
    for step, kl in enumerate(kls, start=1):
        state.global_step = step
        logs = {"loss": 0.1, "kl": kl, "completions/mean_length": mean_length}
        for cb in callbacks:
            cb.on_log(None, state, control, logs=logs)
        if control.should_training_stop:
            return step, logs
    return None, logs


def test_sequence_kl_is_per_token_kl_times_mean_length():
    step, logs = _log_steps([SequenceKLCallback()], [0.5])
    assert logs[RLHF_KL] == pytest.approx(2.0)


def test_kl_budget_stops_at_the_first_step_past_it_and_is_recorded():
    written = []
    health = kl_budget_callback(1.0, written.append, seed=0)
    # per-token KL × 4 tokens: 0.4, 0.8, 1.2 (past the budget 1.0 at step 3), 2.0
    step, _ = _log_steps([SequenceKLCallback(), health], [0.1, 0.2, 0.3, 0.5])
    assert step == 3
    (rec,) = [r for r in written if r.get("warning") == "kl_high"]
    assert rec["stopped_training"] and rec["step"] == 3 and rec["kl"] == pytest.approx(1.2)
    assert rec["kl_source"] == "sampled_rlhf"
    info = kl_budget_record(1.0, health, global_step=3)
    assert info == {
        "budget": 1.0,
        "stopped": True,
        "stopped_at_step": 3,
        "kl_at_stop": pytest.approx(1.2),
        "global_step": 3,
    }


def test_kl_under_budget_never_stops():
    health = kl_budget_callback(5.0, None, seed=0)
    step, _ = _log_steps([SequenceKLCallback(), health], [0.1, 0.2, 0.3, 1.0])
    assert step is None
    assert kl_budget_record(5.0, health, global_step=4)["stopped"] is False


def test_train_policy_logs_every_step_when_a_budget_is_set(monkeypatch, tmp_path):
    """The budget is checked at every step: RLOO logs every step when one is set (every 10 otherwise)."""
    import trl

    from prefopt.config.recipe import load_recipe
    from prefopt.studies import rlhf

    seen = {}

    class Stop(Exception):
        pass

    class FakeTrainer:
        def __init__(self, *, args, callbacks, **_):
            seen["logging_steps"] = args.logging_steps
            seen["callbacks"] = [type(c).__name__ for c in callbacks]
            raise Stop

    monkeypatch.setattr(trl, "RLOOTrainer", FakeTrainer)
    recipe = load_recipe(
        data={
            "algorithm": "dpo",
            "model": {"name": "builtin:tiny-arith"},
            "data": {"train": [{"source": "world", "task": "arith", "size": 8}]},
        }
    )
    for budget, steps in ((2.0, 1), (None, 10)):
        section = validate(RLHFSection, {"policy": {"kl_budget": budget}}, "rlhf").policy
        with pytest.raises(Stop):
            rlhf.train_policy(section, 0.1, recipe, lambda **_: [], "arith", ["1+1="], tmp_path, 0)
        assert seen["logging_steps"] == steps
        assert ("HealthCallback" in seen["callbacks"]) == (budget is not None)
        assert seen["callbacks"][0] == "SequenceKLCallback"


# --------------------------------------------------------------------------------------------- labels
def test_defended_points_are_named_and_labelled_apart():
    plain = validate(RLHFSection, {}, "rlhf")
    assert defence_label(plain) == ("", {})
    s = validate(
        RLHFSection,
        {
            "reward_model": {"ensemble": {"members": 4, "split": "disjoint", "combine": "min"}},
            "policy": {"length_penalty": 0.1, "kl_budget": 2},
        },
        "rlhf",
    )
    tag, params = defence_label(s)
    assert tag == "-ens4-lp0.1-kl2"
    assert params == {"ensemble": "4 disjoint min", "length_penalty": 0.1, "kl_budget": 2.0}
    ens = validate(RLHFSection, {"reward_model": {"ensemble": {"members": 3}}}, "rlhf")
    assert defence_label(ens) == ("-ens3", {"ensemble": "3 full mean_minus_std k=1"})


# --------------------------------------------------------------------------------------------- compare
def test_a_sweep_may_list_plain_and_defended_rlhf(tmp_path, capsys):
    import argparse
    import json
    from pathlib import Path

    import yaml

    from prefopt.cli.compare import add_compare_commands
    from prefopt.studies import compare

    base = str(Path(__file__).resolve().parents[2] / "configs/recipes/quickstart/dpo.yaml")
    plain = {"policy": {"beta": 0.01}}
    defended = {"policy": {"beta": 0.01}, "reward_model": {"ensemble": {"members": 4}}}
    plan = compare.plan_sweep(compare.load_sweep(data={"base": base, "rlhf": [plain, defended]}))
    assert [k for k, _, _ in plan.rlhf_variants] == ["rlhf", "rlhf-ens4"]
    assert plan.rlhf.reward_model.ensemble is None  # the first section
    assert plan.rlhf_variants[1][1].reward_model.ensemble.members == 4
    single = compare.plan_sweep(compare.load_sweep(data={"base": base, "rlhf": defended}))
    assert [k for k, _, _ in single.rlhf_variants] == ["rlhf-ens4"]
    with pytest.raises(PrefoptError, match=r"rlhf\[1\] has the same defences"):
        compare.plan_sweep(compare.load_sweep(data={"base": base, "rlhf": [plain, {"policy": {"beta": 1}}]}))
    with pytest.raises(PrefoptError, match=r"rlhf\[1\].*ensemble.members"):
        bad = {"reward_model": {"ensemble": {"members": 1}}}
        compare.plan_sweep(compare.load_sweep(data={"base": base, "rlhf": [plain, bad]}))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"base": base, "rlhf": [plain, defended]}))
    p = argparse.ArgumentParser(prog="prefopt")
    add_compare_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["compare", "--config", str(sweep_file), "--dry-run"])
    assert args.func(args) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [x["name"] for x in listing] == ["rlhf", "rlhf-ens4"]


def test_defended_rlhf_has_its_own_row_and_frontier_series(tmp_path, monkeypatch):
    from prefopt.studies import compare

    def pt(name, variant, reward, kl, **params):
        return {
            "name": name,
            "algorithm": "rlhf",
            "variant": variant,
            "params": params,
            "seed": 42,
            "status": "finished",
            "eval": {"reward_sampled": reward, "reward_greedy": reward, "kl_to_reference": kl},
        }

    points = [
        pt("rlhf-ens4-beta0.01-seed42", "rlhf-ens4", 0.55, 1.0, beta=0.01, ensemble="4 bootstrap min"),
        pt("rlhf-beta0.01-seed42", None, 0.04, 6.8, beta=0.01),
    ]
    summary = {
        "task": "arith",
        "sweep": "x.yaml",
        "output_dir": "out",
        "wall_s": 1.0,
        "evaluation": compare.CompareEvaluation().model_dump(),
        "hardware": {"cpu_count": 2},
        "torch_threads": 1,
        "load_average": {"start": (1.0, 1.0, 1.0)},
        "reference": {
            "name": "reference",
            "algorithm": "reference",
            "params": {},
            "seed": None,
            "status": "finished",
            "eval": {"reward_sampled": 0.5, "reward_greedy": 0.9, "kl_to_reference": 0.0},
        },
        "points": points,
    }
    rows = [line for line in compare.format_markdown(summary).splitlines() if line.startswith("| rlhf")]
    assert rows[0].startswith("| rlhf | β=0.01 | 42 | 0.040")  # plain first, then the defended
    assert rows[1].startswith("| rlhf-ens4 | β=0.01, ensemble=4 bootstrap min | 42 | 0.550")
    labels = []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    orig = plt.Axes.scatter

    def scatter(self, *a, label=None, c=None, marker=None, **kw):
        labels.append((label, c, marker))
        return orig(self, *a, label=label, c=c, marker=marker, **kw)

    monkeypatch.setattr(plt.Axes, "scatter", scatter)
    compare.plot_frontier(summary, tmp_path / "frontier.png")
    series = {label: (c, m) for label, c, m in labels}
    assert {"reference", "rlhf", "rlhf-ens4"} <= set(series)
    assert series["rlhf"] != series["rlhf-ens4"]


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_kl_budget_stops_rloo_at_the_step_that_passes_it(tmp_path):
    """A real RLOO at a high learning rate: the sampled KL passes the budget within a few steps, training stops
    at that very step (logged every step), and the stop is recorded as a health stop."""
    import json

    from prefopt.config.recipe import load_recipe
    from prefopt.studies.rlhf import train_policy
    from prefopt.world import TrueReward

    recipe = load_recipe(
        data={
            "algorithm": "dpo",
            "model": {"name": "world:arith"},
            "data": {"train": [{"source": "world", "task": "arith", "size": 64}]},
        }
    )
    section = validate(
        RLHFSection,
        {
            "policy": {
                "beta": 0.0001,
                "learning_rate": 3e-3,
                "max_steps": 40,
                "per_device_train_batch_size": 16,
                "warmup_steps": 0,
                "kl_budget": 0.5,
            }
        },
        "rlhf",
    ).policy
    prompts = [f"{a}+{b}=" for a in range(4) for b in range(4)]
    result, _, info = train_policy(
        section, 0.0001, recipe, TrueReward("arith"), "arith", prompts, tmp_path, 0
    )
    budget = info["kl_budget"]
    assert budget["stopped"], budget
    assert 1 <= budget["stopped_at_step"] == result.global_step < 40
    assert budget["kl_at_stop"] > 0.5
    logs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if RLHF_KL in r]
    assert [r["step"] for r in steps] == list(
        range(1, result.global_step + 1)
    )  # every step logged and checked
    assert all(r[RLHF_KL] <= 0.5 for r in steps[:-1]) and steps[-1][RLHF_KL] > 0.5
    (stop,) = [r for r in logs if r.get("event") == "health"]
    assert stop["warning"] == "kl_high" and stop["stopped_training"] and stop["step"] == result.global_step


WEAK_RM = {"learning_rate": 3e-4, "num_train_epochs": 16}  # docs/compare.md "Defended RLHF"
AGGRESSIVE = {"beta": 0.01, "learning_rate": 3e-4, "max_steps": 300}


@pytest.mark.slow
def test_kl_budget_stops_an_over_optimising_run_near_its_budget(tmp_path):
    """docs/compare.md "Defended RLHF": a weak reward model (500 pairs, held-out accuracy 0.70) is
    over-optimised by an aggressive RLOO (seed 42: true reward 0.33 against the reference's 0.54; seeds 1, 2
    also below it); a KL budget of 0.5 stops the same run within about 20 steps, near its budget.
    The true reward it keeps is reported there (more on all three seeds, one thread) but not guarded: the
    same seed-42 pair of runs with torch's default two threads ended 0.415 (budget) against 0.488 (plain),
    so that comparison is within the run-to-run noise of RL on this reward model."""
    from prefopt.config.recipe import load_recipe
    from prefopt.studies.measure import CompareEvaluation, WorldEvaluator
    from prefopt.studies.rlhf import run_rlhf

    base = Path(__file__).resolve().parents[2] / "configs/recipes/quickstart/dpo.yaml"
    recipe = load_recipe(base, ["data.train.0.size=500", "seed=42"])
    evaluator = WorldEvaluator.for_task("arith", CompareEvaluation(num_prompts=200, samples_per_prompt=2))
    got = {}
    for name, extra in (("plain", {}), ("budget", {"kl_budget": 0.5})):
        section = {"reward_model": WEAK_RM, "policy": {**AGGRESSIVE, **extra}, "max_prompts": 450}
        (point,) = run_rlhf(section, recipe, output_dir=tmp_path / name, seed=42, evaluate=evaluator)[
            "points"
        ]
        got[name] = point
    reference = evaluator.reference_result["reward_sampled"]
    plain, budget = got["plain"], got["budget"]
    assert plain["eval"]["reward_sampled"] < reference - 0.05, plain["eval"]  # one reward model is hacked
    assert budget["name"] == "rlhf-kl0.5-beta0.01-seed42" and budget["params"]["kl_budget"] == 0.5
    assert budget["kl_budget"]["stopped"] and budget["global_step"] < 100, budget["kl_budget"]
    # the budget bounds what it measures: the stopped policy's KL is near the budget, the plain run's far past it
    assert budget["eval"]["kl_to_reference"] < 2 * 0.5, budget["eval"]
    assert budget["eval"]["kl_to_reference"] < plain["eval"]["kl_to_reference"] / 2, (
        budget["eval"],
        plain["eval"],
    )


@pytest.mark.slow
def test_a_four_seed_ensemble_keeps_an_aggressive_rloo_at_the_reference(tmp_path):
    """docs/compare.md "Defended RLHF": reward models on 500 pairs (32 epochs at lr 3e-4), the aggressive RLOO
    (β 0.01, lr 3e-4, 300 steps). One reward model (seed 1: held-out accuracy 0.65) was hacked: true reward
    0.363 against the reference's 0.539. The 4-member ensemble of the same recipe on all the pairs, seeds
    1–4 (member 0 *is* that model), combined as mean − std, kept it at 0.819 (seeds 42 / 2 / 3 / 4 / 5:
    0.76 to 0.80; the aggregate ranks held-out pairs 0.05–0.10 better than its members' mean). Those are
    the benchmark's numbers (one thread, 300 prompts × 4). This test, with torch's default two threads and
    200 prompts × 2, measured 0.798 against a reference of 0.548, and aggregate accuracy 0.857 against a
    member mean of 0.767. Guarded: the true reward at or above the reference, and the aggregate ranking
    better than its members."""
    from prefopt.config.recipe import load_recipe
    from prefopt.studies.measure import CompareEvaluation, WorldEvaluator
    from prefopt.studies.rlhf import run_rlhf

    base = Path(__file__).resolve().parents[2] / "configs/recipes/quickstart/dpo.yaml"
    recipe = load_recipe(base, ["data.train.0.size=500", "seed=1"])
    settings = CompareEvaluation(num_prompts=200, samples_per_prompt=2, pref_prompts=300)
    evaluator = WorldEvaluator.for_task("arith", settings)
    section = {
        "reward_model": {
            "learning_rate": 3e-4,
            "num_train_epochs": 32,
            "ensemble": {"members": 4, "split": "full", "combine": "mean_minus_std"},
        },
        "policy": AGGRESSIVE,
    }
    res = run_rlhf(section, recipe, output_dir=tmp_path, seed=1, evaluate=evaluator)
    (point,) = res["points"]
    rm = res["reward_model"]
    n = rm["train_pairs"]  # every member on every pair, each with its own seed
    assert [(m["train_pairs"], m["distinct_pairs"], m["seed"]) for m in rm["members"]] == [
        (n, n, s) for s in (1, 2, 3, 4)
    ]
    members = rm["member_heldout_accuracy"]
    assert len(set(members)) > 1, members  # the seeds give different reward models
    assert rm["heldout_accuracy"] > sum(members) / 4 + 0.03, rm
    assert all((tmp_path / f"reward_model_{i}" / "config.json").exists() for i in range(4))  # each saved
    reference = evaluator.reference_result["reward_sampled"]
    assert point["eval"]["reward_sampled"] >= reference, (point["eval"], reference)


@pytest.mark.slow
def test_quick_sweep_with_plain_and_defended_rlhf_writes_both_points(tmp_path):
    import json

    from prefopt.studies import compare

    quick = Path(__file__).resolve().parents[2] / "configs/sweeps/world-quick.yaml"
    sweep = compare.load_sweep(quick)
    plain = dict(sweep.rlhf)
    defended = {
        **plain,
        "reward_model": {**plain["reward_model"], "ensemble": {"members": 2, "split": "disjoint"}},
        "policy": {**plain["policy"], "length_penalty": 0.01, "kl_budget": 100.0},
    }
    sweep.rlhf = [plain, defended]
    summary = compare.run_sweep(sweep, output_dir=tmp_path, only=["rlhf"])
    names = [p["name"] for p in summary["points"]]
    assert names == ["rlhf-beta0.05-seed42", "rlhf-ens2-lp0.01-kl100-beta0.05-seed42"]
    plain_pt, def_pt = summary["points"]
    assert plain_pt["variant"] is None and def_pt["variant"] == "rlhf-ens2-lp0.01-kl100"
    assert def_pt["params"] == {
        "beta": 0.05,
        "ensemble": "2 disjoint mean_minus_std k=1",
        "length_penalty": 0.01,
        "kl_budget": 100.0,
    }
    rm = def_pt["reward_model"]
    assert len(rm["members"]) == 2 and len(rm["member_heldout_accuracy"]) == 2
    assert 0.0 <= rm["heldout_accuracy"] <= 1.0
    assert def_pt["kl_budget"]["stopped"] is False and def_pt["global_step"] == 2
    saved = json.loads((tmp_path / "points" / "rlhf-ens2-lp0.01-kl100-seed42" / "points.json").read_text())
    assert saved["points"][0]["name"] == def_pt["name"]
    md = (tmp_path / "compare.md").read_text()
    assert "| rlhf | β=0.05 |" in md and "| rlhf-ens2-lp0.01-kl100 | β=0.05, ensemble=2 disjoint" in md
