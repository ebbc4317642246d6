"""``prefopt eval``: held-out preference accuracy by implicit reward, margins, log-prob shifts, sampled KL to
the starting model (also for reference-free ORPO), lengths and the ground-truth world's true reward, on
tiny runs of the quickstart recipes."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from prefopt import cli
from prefopt.core.errors import PrefoptError
from prefopt.evaluate.metrics import as_pairs, evaluate_run, preference_metrics
from prefopt.model.generation import generate_completions, sampled_kl_and_length
from prefopt.model.logprobs import completion_logps, length_batches

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "recipes" / "quickstart"
SMALL_EVAL = [
    "--set",
    "evaluation.enabled=false",
    "--set",
    "evaluation.max_prompts=16",
    "--set",
    "evaluation.max_new_tokens=8",
]

PREFERENCE_FIELDS = {
    "num_pairs",
    "accuracy",
    "reward_margin",
    "reward_chosen",
    "reward_rejected",
    "logp_shift_chosen",
    "logp_shift_rejected",
    "logp_chosen",
    "logp_rejected",
    "reference_logp_chosen",
    "reference_logp_rejected",
    "reference_accuracy",
    "source",
    "reward_definition",
}
SAMPLING_FIELDS = {
    "kl_to_reference",
    "mean_length",
    "reference_mean_length",
    "length_ratio",
    "num_prompts",
    "samples_per_prompt",
    "temperature",
    "max_new_tokens",
}


def _train(tmp_path_factory, algorithm: str, *extra: str) -> Path:
    out = tmp_path_factory.mktemp(algorithm) / "run"
    code = cli.main(
        [
            "train",
            "--config",
            str(QUICKSTART / f"{algorithm}.yaml"),
            "--output-dir",
            str(out),
            "--set",
            "training.max_steps=2",
            "--set",
            "training.logging_steps=1",
            "--set",
            "data.train.0.size=48",
            *SMALL_EVAL,
            *extra,
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    return _train(tmp_path_factory, "dpo", "--set", "data.eval_fraction=0.25")


@pytest.fixture(scope="module")
def orpo_run(tmp_path_factory):
    return _train(tmp_path_factory, "orpo")


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def test_eval_of_a_tiny_dpo_run_returns_every_field(dpo_run):
    result = evaluate_run(dpo_run, world_prompts=32)
    assert json.loads((dpo_run / "eval.json").read_text()) == json.loads(json.dumps(result))
    pref, samp, world = result["preference"], result["sampling"], result["world"]
    assert PREFERENCE_FIELDS <= set(pref) and SAMPLING_FIELDS <= set(samp)
    assert pref["source"] == "recipe eval split" and pref["num_pairs"] > 0
    assert 0.0 <= pref["accuracy"] <= 1.0 and 0.0 <= pref["reference_accuracy"] <= 1.0
    for k in (
        "reward_margin",
        "logp_shift_chosen",
        "logp_shift_rejected",
        "logp_chosen",
        "reference_logp_chosen",
    ):
        assert _finite(pref[k]), k
    # DPO's implicit reward is β·(lp − lp_ref): the margin is β times the difference of the shifts
    import yaml

    beta = yaml.safe_load((dpo_run / "resolved.yaml").read_text())["loss"]["beta"]
    assert pref["reward_margin"] == pytest.approx(
        beta * (pref["logp_shift_chosen"] - pref["logp_shift_rejected"])
    )
    assert pref["logp_chosen"] - pref["reference_logp_chosen"] == pytest.approx(pref["logp_shift_chosen"])
    assert _finite(samp["kl_to_reference"]) and samp["num_prompts"] <= 16 and samp["max_new_tokens"] == 8
    assert samp["mean_length"] > 0 and samp["reference_mean_length"] > 0
    assert {"policy", "reference", "lift_sampled", "lift_greedy"} <= set(world)
    assert 0.0 <= world["policy"]["reward_sampled"] <= 1.0 and world["policy"]["num_prompts"] == 32
    assert result["summary"]["true_reward_lift_sampled"] == world["lift_sampled"]


def test_eval_cli_with_a_data_file(dpo_run, tmp_path, capsys, monkeypatch):
    from prefopt.cli.evaluate import add_eval_commands

    rows = [
        {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
        for a, b in [(3, 4), (10, 20), (21, 5), (7, 7), (33, 9)]
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parser = argparse.ArgumentParser(prog="prefopt")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "--run", str(dpo_run), "--data", str(data)])
    monkeypatch.setattr("prefopt.evaluate.metrics.DEFAULT_WORLD_PROMPTS", 16)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "preference_accuracy" in out and "kl_to_reference" in out
    pref = json.loads((dpo_run / "eval.json").read_text())["preference"]
    assert pref["num_pairs"] == 5 and pref["source"].startswith("--data")

    with pytest.raises(PrefoptError, match="does not exist"):
        evaluate_run(dpo_run, data=tmp_path / "missing.jsonl", write=False)
    with pytest.raises(PrefoptError, match="not a prefopt run directory"):
        evaluate_run(tmp_path, write=False)


def test_reference_free_orpo_gets_kl_against_the_starting_model(orpo_run):
    result = evaluate_run(orpo_run, write=False, world_prompts=16)
    pref, samp = result["preference"], result["sampling"]
    assert "world:arith held-out" in pref["source"]  # no eval split: the world's held-out prompts
    assert pref["reward_definition"].startswith("lambda * mean-token logp")
    assert _finite(samp["kl_to_reference"]) and samp["kl_to_reference"] != 0.0  # the policy moved
    assert PREFERENCE_FIELDS <= set(pref) and SAMPLING_FIELDS <= set(samp)
    assert _finite(pref["logp_shift_chosen"]) and _finite(pref["logp_shift_rejected"])


# ------------------------------------------------------------------------------------------- the pieces
@pytest.fixture(scope="module")
def tiny():
    from prefopt.model.loading import build_builtin, load_tokenizer

    return build_builtin("tiny-arith", 0).eval(), load_tokenizer("builtin:tiny-arith")


def test_policy_equal_to_reference_has_zero_kl_and_zero_shifts(tiny):
    from datasets import Dataset

    from prefopt.config.recipe import load_recipe
    from prefopt.data.tokenization import tokenize_dataset

    model, tok = tiny
    recipe = load_recipe(
        data={
            "algorithm": "dpo",
            "model": {"name": "builtin:tiny-arith"},
            "data": {"train": [{"source": "world"}]},
        }
    )
    res = sampled_kl_and_length(model, model, tok, ["1+2=", "3+4="], num_samples=3, max_new_tokens=5, seed=1)
    assert res["kl_to_reference"] == 0.0 and res["length_ratio"] == 1.0
    pairs = Dataset.from_list(
        [
            {"prompt": "1+2=", "chosen": "3", "rejected": "4"},
            {"prompt": "5+5=", "chosen": "10", "rejected": "11"},
        ]
    )
    tokd, _ = tokenize_dataset(pairs, "paired", tok)
    m = preference_metrics(model, model, tok, recipe, tokd)
    assert m["logp_shift_chosen"] == 0.0 and m["reward_margin"] == 0.0 and m["accuracy"] == 0.0


def test_sampled_ids_and_logps_match_prefopt_tokenisation():
    """Generation starts from encode_prompt and samples the same text as model.generation.sample (same seed); a
    finished sample's ids are what encode_completion gives for its text, and their log-probs equal
    model.logprobs.sequence_logps (the tokenisation training used). Evaluation scores the sampled ids themselves,
    so a non-canonical sample (a random model emitting stray bytes) is scored as sampled."""
    from prefopt import world
    from prefopt.data.tokenization import encode_completion, encode_prompt
    from prefopt.model.generation import sample
    from prefopt.model.loading import load_trained
    from prefopt.model.logprobs import sequence_logps

    model, tok = load_trained(world.reference_checkpoint("arith"))
    prompts = ["12+30=", "7+8=", "40+9="]
    samples = generate_completions(model, tok, prompts, num_samples=4, max_new_tokens=8, seed=3)
    texts = sample(model, tok, prompts, num_samples=4, max_new_tokens=8, seed=3)
    decoded = [tok.decode(s["completion_ids"], skip_special_tokens=True) for s in samples]
    assert decoded == [t for ts in texts for t in ts]
    done = [s for s in samples if s["completion_ids"][-1:] == [tok.eos_token_id]]
    assert len(done) >= 6
    for s in done:
        p = prompts[s["prompt"]]
        assert s["prompt_ids"] == encode_prompt(tok, p)
        assert s["completion_ids"] == encode_completion(
            tok, p, tok.decode(s["completion_ids"], skip_special_tokens=True)
        )
        assert s["length"] == len(s["completion_ids"]) - 1
    lp, _ = completion_logps(
        model, [(s["prompt_ids"], s["completion_ids"]) for s in done], pad_token_id=tok.pad_token_id
    )
    ref = sequence_logps(
        model,
        tok,
        [prompts[s["prompt"]] for s in done],
        [tok.decode(s["completion_ids"], skip_special_tokens=True) for s in done],
    )
    assert torch.allclose(lp.float(), ref.float(), atol=1e-4)


def test_unpaired_eval_rows_are_paired_by_prompt():
    from prefopt.data.schema import build_dataset

    rows = [
        {"prompt": "1+1=", "completion": "2", "label": True},
        {"prompt": "1+1=", "completion": "3", "label": False},
        {"prompt": "2+2=", "completion": "4", "label": True},
    ]
    pairs, note = as_pairs(build_dataset(rows, "unpaired", "text"))
    assert len(pairs) == 1 and pairs[0]["chosen"] == "2" and pairs[0]["rejected"] == "3"
    assert "1 rows without a counterpart" in note


def test_length_batches_respect_rows_and_token_budget():
    lengths = [5, 100, 7, 50, 6, 100]
    batches = length_batches(lengths, max_batch=2, token_budget=150)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) <= 2 and len(b) * max(lengths[i] for i in b) <= 150 or len(b) == 1


def test_without_held_out_data_evaluation_says_what_to_do(tiny):
    from prefopt.config.recipe import load_recipe
    from prefopt.evaluate.metrics import evaluate_models

    model, tok = tiny
    recipe = load_recipe(
        data={
            "algorithm": "simpo",
            "model": {"name": "builtin:tiny-arith"},
            "data": {"train": [{"source": "jsonl", "path": "x.jsonl"}]},
        }
    )
    res = evaluate_models(model, model, tok, recipe, None)
    assert res["preference"] is None and res["sampling"] is None and "world" not in res
    assert any("--data" in n for n in res["notes"])
    assert res["reward_definition"].startswith("beta * mean-token")
