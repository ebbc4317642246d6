"""prefopt compare with an online DPO point: trained as `prefopt train` trains it (the recipe's online judge,
length penalty and KL budget), a row and a frontier point, its online statistics summarised; a bad online
block refused before any model loads; the shipped online-vs-offline sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefopt.core.errors import PrefoptError
from prefopt.judge.scorers import load_callable
from prefopt.studies import compare
from prefopt.studies.compare import runner
from prefopt.studies.iterative import IterativeDPOSection, make_scorer

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "recipes" / "quickstart"
SWEEPS = REPO / "configs" / "sweeps"
TINY = ["data.train.0.size=48", "training.per_device_train_batch_size=8", "training.logging_steps=1"]
EVAL = {"num_prompts": 16, "samples_per_prompt": 2, "pref_prompts": 16}


def _online_sweep(*entry_overrides: list[str], max_steps: int = 2) -> compare.Sweep:
    grid = [
        {
            "algorithm": "online_dpo",
            "base": str(QUICKSTART / "online_dpo.yaml"),
            "loss": {"beta": [4.0]},
            "overrides": list(o),
        }
        for o in entry_overrides
    ]
    return compare.load_sweep(
        data={
            "grid": grid,
            "seeds": [42],
            "overrides": [*TINY, f"training.max_steps={max_steps}"],
            "evaluation": EVAL,
        }
    )


def test_shipped_online_vs_offline_sweep_has_all_three():
    sweep = compare.load_sweep(SWEEPS / "online-vs-offline.yaml")
    plan = runner.plan_sweep(sweep)
    assert sorted({p.algorithm for p in plan.points}) == ["dpo", "online_dpo"]
    assert plan.iterative_dpo is not None and plan.iterative_dpo.rounds == 3
    online = [p for p in plan.points if p.algorithm == "online_dpo"]
    assert len(online) == 4 * len(sweep.seeds) == 12  # k ∈ {4, 8} × epochs ∈ {3, 5}
    assert {(p.recipe.online.k, p.recipe.training["num_train_epochs"]) for p in online} == {
        (4, 3),
        (8, 3),
        (4, 5),
        (8, 5),
    }
    for p in online:
        # trained as prefopt train trains the quickstart: its online block, no reference cache (pairs change)
        assert p.recipe.online.judge["function"] == "prefopt.world:TASKS.arith.reward"
        assert not p.recipe.reference_cache.enabled
    assert all(p.recipe.reference_cache.enabled for p in plan.points if p.algorithm == "dpo")


@pytest.mark.parametrize("name", ["online-vs-offline.yaml", "iterative-vs-offline.yaml", "world.yaml"])
def test_shipped_sweeps_iterative_scorer_loads(name):
    section = IterativeDPOSection(**compare.load_sweep(SWEEPS / name).iterative_dpo)
    load_callable(section.scorer)  # a scorer that does not import fails the study only after the grid ran
    score = make_scorer(section)
    assert score(["2+2="], ["4"]) == [1.0] and score(["2+2="], ["5"]) == [0.0]


def test_tiny_sweep_with_online_points_writes_rows_kl_and_online_stats(tmp_path):
    sweep = _online_sweep(
        [],
        # defences through the sweep: a length penalty on the judge, a KL budget that stops training early
        [
            "online.length_penalty=0.01",
            "online.kl_budget=0.001",
            "training.learning_rate=0.01",
            "training.warmup_steps=0",
        ],
        max_steps=6,
    )
    summary = compare.run_sweep(sweep, output_dir=tmp_path)
    plain, defended = summary["points"]
    for p in (plain, defended):
        assert p["algorithm"] == "online_dpo" and p["status"] == "finished", p.get("error")
        ev = p["eval"]
        for key in ("reward_sampled", "reward_greedy", "kl_to_reference", "pref_accuracy"):
            assert isinstance(ev[key], float), key
        on = p["online"]
        assert on["logs"] == p["global_step"] and on["k"] == 4
        assert 0.0 <= on["score_mean"] <= 1.0 and 0.0 <= on["ties_mean"] <= 1.0
        assert isinstance(on["kl_last"], float) and on["length_mean"] > 0
        point = json.loads((Path(p["run_dir"]) / "point.json").read_text())
        assert point["online"] == on
    assert plain["global_step"] == 6 and plain["online"]["stopped_by_kl_budget"] is None
    assert plain["online"]["judge"]["type"] == "callable"
    # the recipe's length penalty wraps the judge, as online_judge does for prefopt train
    assert defended["online"]["judge"]["type"] == "length_penalty"
    assert defended["online"]["judge"]["alpha"] == 0.01 and defended["online"]["length_penalty"] == 0.01
    stop = defended["online"]["stopped_by_kl_budget"]
    assert stop is not None and stop["kl"] > 0.001 and defended["global_step"] < 6
    assert stop["step"] == defended["global_step"]
    events = [
        json.loads(line)
        for line in (Path(defended["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        if '"event"' in line
    ]
    assert any(e.get("warning") == "kl_high" and e.get("stopped_training") for e in events)
    md = (tmp_path / "compare.md").read_text()
    assert md.count("| online_dpo | β=4 | 42 |") == 2
    assert "## Online DPO" in md and "| 42 | " in md.split("## Online DPO")[1]
    assert (tmp_path / "frontier.png").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("online.k=1", "online.k"),
        ("online.judge.function=nosuchmodule:reward", "online.judge.function"),
        ("online.kl_budget=-1", "online.kl_budget"),
    ],
)
def test_bad_online_block_in_a_sweep_point_refused_before_any_model_loads(
    tmp_path, monkeypatch, override, message
):
    def no_model(*a, **k):
        raise AssertionError("a model loaded before the sweep was checked")

    monkeypatch.setattr(runner, "load_model", no_model)
    monkeypatch.setattr(runner, "load_trained", no_model)
    with pytest.raises(PrefoptError) as err:
        compare.run_sweep(_online_sweep([override]), output_dir=tmp_path)
    assert message in str(err.value)
    assert not (tmp_path / "points").exists()


def test_online_fields_are_swept_and_refused_on_an_offline_entry():
    base = str(QUICKSTART / "online_dpo.yaml")
    sweep = compare.load_sweep(
        data={
            "grid": [
                {"algorithm": "online_dpo", "base": base, "online": {"k": [4, 8], "length_penalty": 0.05}}
            ]
        }
    )
    points = compare.expand_grid(sweep)
    assert [p.name for p in points] == ["online_dpo-k4-seed0", "online_dpo-k8-seed0"]
    assert [p.recipe.online.k for p in points] == [4, 8] and [p.params["k"] for p in points] == [4, 8]
    assert {p.recipe.online.length_penalty for p in points} == {0.05}
    assert {p.recipe.online.judge["type"] for p in points} == {"callable"}  # the rest of the base's block
    offline = compare.load_sweep(
        data={"grid": [{"algorithm": "dpo", "base": str(QUICKSTART / "dpo.yaml"), "online": {"k": 4}}]}
    )
    with pytest.raises(PrefoptError, match="online"):
        compare.expand_grid(offline)


def _row(alg, seed, reward, kl, **extra):
    return {
        "algorithm": alg,
        "seed": seed,
        "status": "finished",
        "eval": {"reward_sampled": reward, "kl_to_reference": kl},
        **extra,
    }


def test_online_section_of_the_table_sets_each_online_point_beside_offline_and_iterative():
    from prefopt.studies.compare.tables import online_vs_others

    online = {"score_mean": 0.7, "ties_mean": 0.25, "stopped_by_kl_budget": None}
    results = [
        _row("dpo", 1, 0.75, 0.21, params={"beta": 4.0}),
        _row("dpo", 2, 0.70, 0.20, params={"beta": 4.0}),
        *(
            _row("iterative_dpo", s, rw, kl, params={"round": i + 1, "beta": 4.0}, final=i == 2)
            for s in (1, 2)
            for i, (rw, kl) in enumerate([(0.69, 0.16), (0.80, 0.26), (0.84, 0.37)])
        ),
        _row("online_dpo", 1, 0.82, 0.27, params={"beta": 4.0}, online=online),
        _row(
            "online_dpo",
            2,
            0.81,
            0.29,
            params={"beta": 4.0},
            online={**online, "stopped_by_kl_budget": {"step": 40, "kl": 0.31}},
        ),
    ]
    lines = online_vs_others(results)
    seed1 = next(line for line in lines if line.startswith("| β=4 | 1 |"))
    # offline nearest in KL, the iterative round nearest in KL (round 2 at 0.26), the final round
    assert seed1 == (
        "| β=4 | 1 | 0.820 @ 0.270 | 0.700 | 0.250 | — | 0.750 @ 0.210 | 0.800 @ 0.260 (round 2) | 0.840 @ 0.370 |"
    )
    assert "| step 40 |" in next(line for line in lines if line.startswith("| β=4 | 2 |"))
    means = next(line for line in lines if line.startswith("| β=4 | 2 | 0.815"))
    assert (
        means
        == "| β=4 | 2 | 0.815 (0.810–0.820) | 0.280 | 0.725 (0.700–0.750) | 0.205 | 0.840 (0.840–0.840) | 0.370 |"
    )
    assert online_vs_others([r for r in results if r["algorithm"] != "online_dpo"]) == []


def test_frontier_labels_tell_swept_online_points_apart():
    from prefopt.studies.compare.plots import _short_label

    row = {"algorithm": "online_dpo", "params": {"num_train_epochs": 5, "k": 8, "beta": 4.0}}
    assert _short_label(row) == "β=4 ep=5 k=8"
    assert _short_label({"algorithm": "dpo", "params": {"beta": 0.1}}) == "β=0.1"
    assert _short_label({"algorithm": "iterative_dpo", "params": {"round": 2, "beta": 4.0}}) == "r2"
