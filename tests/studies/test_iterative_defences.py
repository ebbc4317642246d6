"""Iterative DPO's defences: a judge block (a pessimistic ensemble), a length penalty on the scores, and a KL
budget that stops before the next round — each recorded on the study's points."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefopt.config.recipe import load_recipe
from prefopt.core.errors import PrefoptError
from prefopt.studies import compare
from prefopt.studies.compare import runner
from prefopt.studies.iterative import (
    IterativeDPOSection,
    best_vs_worst,
    budget_stop,
    make_scorer,
    run_iterative_dpo,
)

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "recipes" / "quickstart"
TRUE = "prefopt.world:TASKS.arith.reward"
# the true reward plus 0.5 per reply character: a judge that likes long replies
LONG = {
    "type": "callable",
    "function": "prefopt.judge.length:length_biased_reward",
    "kwargs": {"function": TRUE, "bonus": 0.5},
}
TINY = ["data.train.0.size=48", "training.max_steps=2", "training.per_device_train_batch_size=8"]


def _section(**kw) -> IterativeDPOSection:
    return IterativeDPOSection(**{"rounds": 1, "prompts_per_round": 16, "samples_per_prompt": 4, **kw})


def test_judge_block_scores_and_a_pessimistic_ensemble_takes_the_lowest():
    # "0+0=": "0" is right (true reward 1), "00000" wrong (0); the long-biased judge gives 1.5 and 2.5
    prompts, replies = ["0+0=", "0+0="], ["0", "00000"]
    assert make_scorer(_section(judge=LONG))(prompts, replies) == pytest.approx([1.5, 2.5])
    ensemble = {
        "type": "ensemble",
        "combine": "min",
        "judges": [LONG, {"type": "callable", "function": TRUE}],
    }
    assert make_scorer(_section(judge=ensemble))(prompts, replies) == pytest.approx([1.0, 0.0])
    mms = {**ensemble, "combine": "mean_minus_std"}
    low = make_scorer(_section(judge=mms))(prompts, replies)
    assert low[0] < 1.25 and low[1] < 1.25  # below each pair's mean (1.25) by its spread


def test_length_penalty_changes_the_chosen_reply():
    prompts, samples = ["0+0="], [["0", "00000", "0", "00000"]]
    for penalty, chosen in ((0.0, "00000"), (1.0, "0")):
        score = make_scorer(_section(judge=LONG, length_penalty=penalty))  # no tokenizer: per character
        flat = score(prompts * 4, samples[0])
        rows, stats = best_vs_worst(prompts, samples, [flat])
        assert stats["pairs"] == 1 and rows[0]["chosen"] == chosen, (penalty, flat)

    # the scorer path takes the penalty too; with the policy's tokenizer it counts tokens
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(2 * len(text)))}

    score = make_scorer(_section(scorer="prefopt.world:world_reward", length_penalty=0.25), tokenizer=Tok())
    assert score(["2+2=", "2+2="], ["4", "44"]) == pytest.approx([0.5, -1.0])


def test_failed_scores_are_left_out_of_the_pairs():
    rows, stats = best_vs_worst(["p", "q"], [["a", "b", "c"], ["x", "y"]], [[None, 1.0, 0.0], [None, None]])
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("b", "c")]
    assert stats["ties_skipped"] == 1


def test_one_scorer_only_and_bad_judge_refused_before_training(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="one of judge, reward_model and scorer"):
        _section(judge=LONG, scorer="prefopt.judge.length:length_biased_reward")
    with pytest.raises(ValueError, match="one of judge"):
        _section(judge=LONG, reward_model="runs/x/reward_model")

    def no_model(*a, **k):
        raise AssertionError("a model loaded before the sweep was checked")

    monkeypatch.setattr(runner, "load_model", no_model)
    monkeypatch.setattr(runner, "load_trained", no_model)
    sweep = compare.load_sweep(
        data={
            "base": str(QUICKSTART / "dpo.yaml"),
            "iterative_dpo": {"judge": {"type": "callable", "function": "nosuchmodule:score"}},
        }
    )
    with pytest.raises(PrefoptError, match=r"iterative_dpo\.judge\.function"):
        compare.run_sweep(sweep, output_dir=tmp_path)


def test_budget_stop_rule():
    s = _section(rounds=3, kl_budget=0.2)
    assert budget_stop(s, 1, {"kl_to_reference": 0.1}) is None
    stop = budget_stop(s, 2, {"kl_to_reference": 0.3})
    assert stop == {"reason": "kl_budget", "round": 2, "kl": 0.3, "kl_budget": 0.2, "rounds_skipped": 1}
    assert budget_stop(_section(rounds=3), 1, {"kl_to_reference": 9.0}) is None  # no budget
    assert budget_stop(s, 1, None) is None  # nothing measured


def _fake_evaluate(kls):
    calls = []

    def evaluate(policy):
        calls.append(1)
        return {"kl_to_reference": kls[len(calls) - 1], "reward_sampled": 0.5, "reward_greedy": 0.5}

    return evaluate, calls


def test_kl_budget_stops_after_the_round_that_passes_it(tmp_path):
    base = load_recipe(QUICKSTART / "dpo.yaml", TINY)
    evaluate, calls = _fake_evaluate([0.5, 0.5, 0.5])
    section = {**_section(rounds=3, kl_budget=1e-6, judge=LONG, length_penalty=0.1).model_dump()}
    res = run_iterative_dpo(section, base, output_dir=tmp_path, evaluate=evaluate)
    (point,) = res["points"]
    assert len(calls) == 1 and point["final"] and point["status"] == "finished"
    assert point["stopped"] == res["stopped"]
    assert point["stopped"] == {
        "reason": "kl_budget",
        "round": 1,
        "kl": 0.5,
        "kl_budget": 1e-6,
        "rounds_skipped": 2,
    }
    assert point["defences"] == {"judge": LONG, "length_penalty": 0.1, "kl_budget": 1e-6}
    assert not (tmp_path / "round2").exists()


def test_within_budget_all_rounds_run(tmp_path):
    base = load_recipe(QUICKSTART / "dpo.yaml", TINY)
    evaluate, calls = _fake_evaluate([0.1, 0.2])
    res = run_iterative_dpo(_section(rounds=2, kl_budget=0.3), base, output_dir=tmp_path, evaluate=evaluate)
    assert [p["params"]["round"] for p in res["points"]] == [1, 2] and len(calls) == 2
    assert [p["final"] for p in res["points"]] == [False, True]
    assert res["stopped"] is None and all(p["stopped"] is None for p in res["points"])
    assert res["points"][0]["defences"]["judge"] == {"scorer": "prefopt.world:world_reward"}
