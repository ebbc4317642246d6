"""prefopt compare: the sweep schema and grid expansion, the table and frontier, and minimal end-to-end runs
of a sweep, of the RLHF baseline (reward model + RLOO) and of iterative DPO on the ground-truth world."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from prefopt.core.errors import PrefoptError
from prefopt.studies import compare

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "configs" / "sweeps" / "world-quick.yaml"
FULL = REPO / "configs" / "sweeps" / "world.yaml"
QUICKSTART = REPO / "configs" / "recipes" / "quickstart"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _parser():
    from prefopt.cli.compare import add_compare_commands

    p = argparse.ArgumentParser(prog="prefopt")
    add_compare_commands(p.add_subparsers(dest="command", required=True))
    return p


# --------------------------------------------------------------------------------------------- schema
def test_shipped_sweep_expands_to_five_algorithms_times_three():
    sweep = compare.load_sweep(FULL)
    points = compare.expand_grid(sweep)
    assert len(points) == 15
    by_alg: dict[str, list] = {}
    for p in points:
        by_alg.setdefault(p.algorithm, []).append(p)
    assert sorted(by_alg) == ["dpo", "ipo", "kto", "orpo", "simpo"]
    assert all(len(v) == 3 for v in by_alg.values())
    # the swept parameter reaches the recipe; the rest comes from the quickstart base
    ipo = by_alg["ipo"]
    assert sorted(p.recipe.loss_params.tau for p in ipo) == sorted(p.params["tau"] for p in ipo)
    assert {p.recipe.source_path.name for p in ipo} == {"ipo.yaml"}
    # reference cache hook: on for algorithms with a reference, untouched for ORPO/SimPO
    assert all(p.recipe.reference_cache.enabled for p in points if p.algorithm in ("dpo", "ipo", "kto"))
    assert not any(p.recipe.reference_cache.enabled for p in points if p.algorithm in ("orpo", "simpo"))
    assert sweep.rlhf is not None and sweep.iterative_dpo["rounds"] == 3
    from prefopt.studies.iterative import IterativeDPOSection
    from prefopt.studies.rlhf import RLHFSection

    RLHFSection(**sweep.rlhf)
    IterativeDPOSection(**sweep.iterative_dpo)


def test_grid_product_seeds_and_algorithm_switch(tmp_path):
    sweep = compare.load_sweep(
        data={
            "base": str(QUICKSTART / "dpo.yaml"),
            "grid": [
                {
                    "algorithm": "dpo",
                    "loss": {"beta": [0.1, 0.2], "label_smoothing": 0.1},
                    "training": {"learning_rate": [1e-4, 1e-3]},
                },
                {"algorithm": "ipo", "loss": {"tau": 0.3}},  # base is DPO: its loss is replaced, not merged
                {"algorithm": "kto", "loss": {"beta": 0.5}},  # paired base data → transform: unpair
            ],
            "seeds": [1, 2],
            "overrides": ["training.max_steps=3"],
        }
    )
    points = compare.expand_grid(sweep)
    assert len(points) == (2 * 2 + 1 + 1) * 2
    names = [p.name for p in points]
    assert len(set(names)) == len(names)
    assert "dpo-beta0.1-learning_rate0.0001-seed1" in names
    dpo = [p for p in points if p.algorithm == "dpo"]
    assert {p.recipe.loss_params.label_smoothing for p in dpo} == {0.1}
    assert all(p.recipe.training["max_steps"] == 3 for p in points)
    assert {p.seed for p in points} == {1, 2} and all(p.recipe.seed == p.seed for p in points)
    ipo = next(p for p in points if p.algorithm == "ipo")
    assert ipo.recipe.loss == {"tau": 0.3} and ipo.params == {"tau": 0.3}
    kto = next(p for p in points if p.algorithm == "kto")
    assert kto.recipe.data.transform == "unpair"


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"base": str(QUICKSTART / "dpo.yaml"), "grid": [{"algorithm": "dpo", "los": {"beta": [0.1]}}]},
            'Did you mean "loss"',
        ),
        (
            {"base": str(QUICKSTART / "dpo.yaml"), "seed": [0], "grid": [{"algorithm": "dpo"}]},
            'Did you mean "seeds"',
        ),
        ({"grid": [{"algorithm": "dpo", "loss": {"beta": [0.1]}}]}, "no base recipe"),
        (
            {"base": str(QUICKSTART / "dpo.yaml"), "grid": [{"algorithm": "dpo", "loss": {"tau": [0.1]}}]},
            "loss.tau",
        ),
        ({"base": "nope.yaml", "grid": [{"algorithm": "dpo"}]}, "does not exist"),
        ({"base": str(QUICKSTART / "dpo.yaml")}, "runs nothing"),
    ],
)
def test_sweep_errors_name_the_key(data, message):
    with pytest.raises(PrefoptError, match=message):
        compare.expand_grid(compare.load_sweep(data=data))


def test_rlhf_and_iterative_sections_are_validated_before_training():
    base = str(QUICKSTART / "dpo.yaml")
    with pytest.raises(PrefoptError, match='rlhf: unknown key "policy.betta". Did you mean "beta"'):
        compare.plan_sweep(compare.load_sweep(data={"base": base, "rlhf": {"policy": {"betta": 0.1}}}))
    with pytest.raises(PrefoptError, match='Did you mean "rounds"'):
        compare.plan_sweep(compare.load_sweep(data={"base": base, "iterative_dpo": {"round": 3}}))
    plan = compare.plan_sweep(compare.load_sweep(data={"base": base, "iterative_dpo": {"rounds": 2}}))
    assert plan.points == [] and plan.iterative_dpo.rounds == 2 and plan.task == "arith"
    assert plan.side_bases["iterative_dpo"].source_path.name == "dpo.yaml"


def test_dry_run_lists_points(capsys):
    args = _parser().parse_args(["compare", "--config", str(QUICK), "--dry-run"])
    assert args.func(args) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listing[:2]] == ["dpo-beta0.1-seed42", "dpo-beta0.5-seed42"]
    assert {p["name"] for p in listing[2:]} == {"rlhf", "iterative_dpo"}


# --------------------------------------------------------------------------------------------- pieces
def test_best_vs_worst_pairs_and_ties():
    from prefopt.studies.iterative import best_vs_worst
    from prefopt.world.rewards import world_reward

    prompts = ["1+2=", "3+4=", "5+5="]
    samples = [["3", "4", "4", "3 "], ["7", "7", "7", "7"], ["11", "9", "9", "12"]]
    scores = [[world_reward(p, c) for c in outs] for p, outs in zip(prompts, samples)]
    rows, stats = best_vs_worst(prompts, samples, scores)
    assert stats == {
        "prompts": 3,
        "pairs": 1,
        "ties_skipped": 2,
    }  # all-right and all-wrong prompts give no pair
    assert rows[0]["prompt"] == "1+2=" and rows[0]["chosen"] == "3" and rows[0]["rejected"] == "4"
    # continuous scores: extremes, the more frequent completion among equals
    rows, _ = best_vs_worst(["p"], [["a", "b", "b", "c"]], [[0.5, 0.1, 0.1, 0.1]])
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("a", "b")


def test_scorer_paths():
    from prefopt.judge.scorers import load_callable
    from prefopt.studies.iterative import IterativeDPOSection, make_scorer
    from prefopt.world.rewards import world_reward

    assert load_callable("prefopt.world:world_reward") is world_reward
    assert load_callable("prefopt.world.rewards.world_reward") is world_reward
    with pytest.raises(PrefoptError, match="cannot load the scorer"):
        load_callable("prefopt.world:nope")
    score = make_scorer(IterativeDPOSection())
    assert score(["2+2=", "count a 3:"], ["4", "aa"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="not a prompt"):
        world_reward("hello", "4")


def _summary(points):
    return {
        "task": "arith",
        "sweep": "x.yaml",
        "output_dir": "out",
        "wall_s": 12.0,
        "evaluation": compare.CompareEvaluation().model_dump(),
        "hardware": {"cpu_count": 2},
        "torch_threads": 2,
        "load_average": {"start": (1.0, 1.0, 1.0)},
        "reference": {
            "name": "reference",
            "algorithm": "reference",
            "params": {},
            "seed": None,
            "status": "finished",
            "eval": {"reward_sampled": 0.5, "reward_greedy": 0.87, "kl_to_reference": 0.0},
        },
        "points": points,
    }


def _pt(alg, reward, kl, **params):
    return {
        "name": f"{alg}-{params}",
        "algorithm": alg,
        "params": params,
        "seed": 0,
        "status": "finished",
        "wall_s": 1.0,
        "train_s": 0.5,
        "cpu_s": 1.0,
        "peak_rss_mb": 500.0,
        "eval": {
            "reward_sampled": reward,
            "reward_greedy": reward + 0.3,
            "kl_to_reference": kl,
            "pref_accuracy": 0.6,
            "logp_accuracy": 0.9,
        },
    }


def test_table_sorted_by_algorithm_and_beta_and_frontier_png(tmp_path):
    points = [
        _pt("simpo", 0.6, 0.5, beta=2.0),
        _pt("dpo", 0.62, 0.4, beta=1.0),
        _pt("dpo", 0.7, 0.9, beta=0.1),
        _pt("ipo", 0.55, 0.2, tau=0.25),
        _pt("rlhf", 0.58, 0.3, beta=0.05),
        {**_pt("iterative_dpo", 0.66, 0.35, round=1, beta=0.1), "final": False},
        {**_pt("iterative_dpo", 0.75, 0.6, round=2, beta=0.1), "final": True},
        {
            "name": "kto-x",
            "algorithm": "kto",
            "params": {"beta": 1.0},
            "seed": 0,
            "status": "failed",
            "error": "boom",
        },
    ]
    summary = _summary(points)
    summary["iterative_vs_offline_dpo"] = compare.iterative_vs_offline(points)
    md = compare.format_markdown(summary)
    body = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| algorithm")]
    assert [line.split(" | ")[0].strip("| ") for line in body] == [
        "reference",
        "dpo",
        "dpo",
        "ipo",
        "kto",
        "simpo",
        "rlhf",
        "iterative_dpo",
        "iterative_dpo",
    ]
    assert "β=0.1" in body[1] and "β=1" in body[2]
    assert "failed: boom" in md
    cmp = summary["iterative_vs_offline_dpo"]
    # at KL 0.6 the offline points within reach are β=1 (KL 0.4, 0.62): iterative's 0.75 beats it
    assert cmp["beats_offline"] and cmp["runs"][0]["best_offline_at_comparable_kl"]["reward_sampled"] == 0.62
    png = compare.plot_frontier(summary, tmp_path / "frontier.png")
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000


def test_iterative_vs_offline_compares_each_seed_with_its_own_offline_points():
    def at(pt, seed):
        return {**pt, "seed": seed, "name": f"{pt['name']}-seed{seed}"}

    points = [
        at(_pt("dpo", 0.50, 0.6, beta=2.0), 1),
        at(_pt("dpo", 0.40, 0.6, beta=2.0), 2),
        {**at(_pt("iterative_dpo", 0.55, 0.6, round=3, beta=2.0), 1), "final": True},
        {**at(_pt("iterative_dpo", 0.45, 0.6, round=3, beta=2.0), 2), "final": True},
    ]
    cmp = compare.iterative_vs_offline(points)
    # seed 2's iterative (0.45) is below seed 1's offline (0.50) but above its own seed's (0.40)
    assert [r["best_offline_at_comparable_kl"]["reward_sampled"] for r in cmp["runs"]] == [0.50, 0.40]
    assert cmp["beats_offline"]
    assert cmp["text"].startswith("Over 2 seeds") and "on 2 of 2 seeds" in cmp["text"]
    points[3] = {**points[3], "eval": {**points[3]["eval"], "reward_sampled": 0.35}}
    cmp = compare.iterative_vs_offline(points)
    assert not cmp["beats_offline"] and "on 1 of 2 seeds" in cmp["text"]


# --------------------------------------------------------------------------------------------- end to end
def test_tiny_sweep_writes_table_json_and_frontier(tmp_path):
    out = tmp_path / "cmp"
    args = _parser().parse_args(
        ["compare", "--config", str(QUICK), "--output-dir", str(out), "--only", "dpo"]
    )
    assert args.func(args) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert [p["name"] for p in summary["points"]] == ["dpo-beta0.1-seed42", "dpo-beta0.5-seed42"]
    assert summary["tokenized_cache_hits"] == 1  # the second point reused the first one's tokenised data
    for p in summary["points"]:
        assert p["status"] == "finished" and p["global_step"] == 2
        ev = p["eval"]
        for key in ("reward_sampled", "reward_greedy", "kl_to_reference", "pref_accuracy", "logp_accuracy"):
            assert isinstance(ev[key], float), key
        assert p["wall_s"] > 0 and p["peak_rss_mb"] > 0
        assert (Path(p["run_dir"]) / "resolved.yaml").exists() and (
            Path(p["run_dir"]) / "metrics.jsonl"
        ).exists()
    assert summary["reference"]["eval"]["kl_to_reference"] == 0.0
    md = (out / "compare.md").read_text()
    assert "| dpo | β=0.1 | 42 |" in md and "| dpo | β=0.5 | 42 |" in md
    assert (out / "frontier.png").read_bytes()[:8] == PNG_MAGIC
    # a re-run reuses the finished points instead of training them again
    again = compare.run_sweep(compare.load_sweep(QUICK), output_dir=out, only=["dpo"])
    assert [p["wall_s"] for p in again["points"]] == [p["wall_s"] for p in summary["points"]]


@pytest.fixture(scope="module")
def rlhf_run(tmp_path_factory):
    from prefopt.config.recipe import load_recipe
    from prefopt.studies.rlhf import run_rlhf

    sweep = compare.load_sweep(QUICK)
    base = load_recipe(QUICKSTART / "dpo.yaml", sweep.overrides)
    evaluator = compare.WorldEvaluator.for_task("arith", sweep.evaluation)
    out = tmp_path_factory.mktemp("rlhf")
    return run_rlhf(sweep.rlhf, base, output_dir=out, evaluate=evaluator), out


@pytest.mark.slow
def test_rlhf_minimal(rlhf_run):
    res, out = rlhf_run
    rm = res["reward_model"]
    assert rm["global_step"] == 2 and 0.0 <= rm["heldout_accuracy"] <= 1.0
    assert (out / "reward_model" / "config.json").exists()
    (point,) = res["points"]
    assert point["algorithm"] == "rlhf" and point["params"] == {"beta": 0.05} and point["global_step"] == 2
    assert point["trainer"].endswith("RLOOTrainer")
    # the KL penalty's reference is the world reference checkpoint
    from prefopt import world

    assert Path(point["reference_checkpoint"]) == world.reference_checkpoint("arith")
    for key in ("reward_sampled", "reward_greedy", "kl_to_reference", "pref_accuracy"):
        assert isinstance(point["eval"][key], float), key
    logged = [
        json.loads(line) for line in (Path(point["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    assert any("rewards/true_reward/mean" in rec for rec in logged)  # logged with weight 0, never trained on


def test_reward_model_scorer_uses_prefopt_ids():
    """The RLHF scorer scores prompt ids + generated ids cut after EOS — what the reward model trained on."""
    import torch

    from prefopt.data.tokenization import encode_completion, encode_prompt
    from prefopt.judge.scorers import RewardModelScorer
    from prefopt.model.loading import load_tokenizer

    class Last(torch.nn.Module):  # "reward" = id of the last non-pad token
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, **_):
            last = attention_mask.sum(-1) - 1
            return type("O", (), {"logits": input_ids.gather(1, last[:, None]).float()})()

    tok = load_tokenizer("builtin:tiny-arith")
    scorer = RewardModelScorer(Last(), tok)
    c_ids = encode_completion(tok, "2+2=", "4") + [tok.pad_token_id, tok.pad_token_id]
    seqs = scorer.sequences(["2+2="], [c_ids])
    assert seqs == [encode_prompt(tok, "2+2=") + encode_completion(tok, "2+2=", "4")]
    assert scorer(prompts=["2+2="], completions=["4"], completion_ids=[c_ids]) == [float(tok.eos_token_id)]
    assert scorer("2+2=", "4") == float(tok.eos_token_id)


def test_iterative_dpo_minimal(tmp_path):
    from prefopt.config.recipe import load_recipe
    from prefopt.studies.iterative import run_iterative_dpo

    sweep = compare.load_sweep(QUICK)
    base = load_recipe(QUICKSTART / "dpo.yaml", sweep.overrides)
    evaluator = compare.WorldEvaluator.for_task("arith", sweep.evaluation)
    res = run_iterative_dpo(sweep.iterative_dpo, base, output_dir=tmp_path, evaluate=evaluator)
    (point,) = res["points"]
    assert point["algorithm"] == "iterative_dpo" and point["final"] and point["params"]["round"] == 1
    assert point["reference"] == "initial"
    stats = point["round"]
    assert stats["prompts"] == 16 and stats["pairs"] + stats["ties_skipped"] == 16 and stats["pairs"] > 0
    assert point["global_step"] == 2
    for key in ("reward_sampled", "reward_greedy", "kl_to_reference", "pref_accuracy"):
        assert isinstance(point["eval"][key], float), key


@pytest.mark.slow
def test_iterative_dpo_scored_by_the_rlhf_reward_model(rlhf_run, tmp_path):
    from prefopt.config.recipe import load_recipe
    from prefopt.studies.iterative import run_iterative_dpo

    _, rlhf_dir = rlhf_run
    sweep = compare.load_sweep(QUICK)
    base = load_recipe(QUICKSTART / "dpo.yaml", sweep.overrides)
    section = {**sweep.iterative_dpo, "reward_model": str(rlhf_dir / "reward_model"), "reference": "previous"}
    res = run_iterative_dpo(
        section,
        base,
        output_dir=tmp_path,
        evaluate=compare.WorldEvaluator.for_task("arith", sweep.evaluation),
    )
    (point,) = res["points"]
    assert point["status"] == "finished" and point["round"]["pairs"] > 0  # continuous scores: few ties
    assert (tmp_path / "round1" / "model" / "model.safetensors").exists()  # the next round's reference
