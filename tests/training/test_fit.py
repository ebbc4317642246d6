"""One training lifecycle (prefopt.training.fit.fit) with one non-finite policy, wherever a model trains:
stop, keep the last good checkpoint, mark the run failed, exit 3 — for ``prefopt train`` (see also
tests/training/test_resilience.py), a compare point, an iterative-DPO round and ``prefopt compare``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from prefopt.config.recipe import load_recipe
from prefopt.core.errors import NonFiniteError
from prefopt.data.tokenized import TokenizedCache, prepare_data
from prefopt.model.loading import load_model
from prefopt.studies import compare
from prefopt.training.build import build_trainer
from prefopt.training.callbacks import MetricsJsonlCallback
from prefopt.training.fit import fit
from prefopt.training.resilience import MARKER, last_complete_checkpoint
from prefopt.training.trainers import PrefoptDPOTrainer

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "configs" / "sweeps" / "world-quick.yaml"
DPO_YAML = REPO / "configs" / "recipes" / "quickstart" / "dpo.yaml"
TINY = [
    "data.train.0.size=32",
    "training.max_steps=6",
    "training.per_device_train_batch_size=8",
    "training.logging_steps=1",
    "training.save_steps=2",
    "training.warmup_steps=0",
    "evaluation.enabled=false",
]


@pytest.fixture
def nan_from_step(monkeypatch):
    """Make PrefoptDPOTrainer's loss NaN from a given optimizer step on."""

    def poison(step: int):
        original = PrefoptDPOTrainer.compute_loss

        def poisoned(self, model, inputs, *a, **k):
            loss = original(self, model, inputs, *a, **k)
            return loss * float("nan") if self.state.global_step >= step else loss

        monkeypatch.setattr(PrefoptDPOTrainer, "compute_loss", poisoned)

    return poison


def _trainer(tmp_path, extra=()):
    recipe = load_recipe(DPO_YAML, [*TINY, *extra])
    model, tok = load_model(recipe.model, seed=recipe.seed)
    train_tok, eval_tok, *_ = prepare_data(recipe, tok)
    metrics = MetricsJsonlCallback(tmp_path / "metrics.jsonl")
    trainer = build_trainer(
        recipe, model, tok, train_tok, None, output_dir=str(tmp_path / "ckpt"), callbacks=[metrics]
    )
    return trainer, metrics


def test_fit_finishes_with_marked_checkpoints(tmp_path):
    trainer, metrics = _trainer(tmp_path)
    result = fit(trainer, checkpoints=tmp_path / "ckpt", metrics_writer=metrics.write)
    assert result.finished and result.status == "finished" and result.error is None
    assert result.global_step == 6 and isinstance(result.train_loss, float) and result.train_s > 0
    assert result.checkpoint == tmp_path / "ckpt" / "checkpoint-6" and (result.checkpoint / MARKER).exists()
    assert result.raise_for_status() is result
    assert result.model is trainer.accelerator.unwrap_model(trainer.model)


def test_fit_stops_on_a_nan_loss_and_keeps_the_last_good_checkpoint(tmp_path, nan_from_step):
    """The NaN arrives at step 4, a save step: checkpoint-4 must not be written (its optimizer step ran on
    zeroed gradients, and Adam's momentum still moved the weights), checkpoint-2 stays the latest."""
    nan_from_step(3)
    trainer, metrics = _trainer(tmp_path)
    result = fit(trainer, checkpoints=tmp_path / "ckpt", metrics_writer=metrics.write)
    assert result.status == "failed" and not result.finished
    step, term, _ = result.nonfinite
    assert step == 4 and result.error == f"non-finite {term} at step 4"
    assert result.record() == {"step": 4, "term": term, "value": "nan"}
    assert (
        result.checkpoint == last_complete_checkpoint(tmp_path / "ckpt") == tmp_path / "ckpt" / "checkpoint-2"
    )
    events = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "nonfinite", "step": 4, "term": term, "value": "nan"} in events
    with pytest.raises(NonFiniteError) as exc:
        result.raise_for_status()
    assert exc.value.exit_code == 3 and exc.value.checkpoint == result.checkpoint
    for p in trainer.model.parameters():  # the non-finite step was never applied
        assert torch.isfinite(p).all()


def test_a_nan_compare_point_is_failed_not_saved_nor_evaluated(tmp_path, nan_from_step):
    nan_from_step(1)
    sweep = compare.load_sweep(QUICK)
    (point, *_) = compare.expand_grid(sweep)
    point.recipe.output.save_model = True
    calls = []
    res = compare.run_point(point, tmp_path / "p", lambda m: calls.append(m) or {}, TokenizedCache())
    assert (
        res["status"] == "failed"
        and res["error"].startswith("non-finite")
        and res["error"].endswith("step 2")
    )
    assert res["nonfinite"]["step"] == 2 and res["eval"] is None and calls == []
    assert not (tmp_path / "p" / "model").exists()
    assert json.loads((tmp_path / "p" / "point.json").read_text())["status"] == "failed"
    assert '"event": "nonfinite"' in (tmp_path / "p" / "metrics.jsonl").read_text()


def test_a_nan_iterative_round_fails_and_ends_the_study(tmp_path, nan_from_step):
    from prefopt.studies.iterative import run_iterative_dpo

    nan_from_step(0)
    sweep = compare.load_sweep(QUICK)
    base = load_recipe(DPO_YAML, sweep.overrides)
    calls = []
    section = {**sweep.iterative_dpo, "rounds": 3}
    res = run_iterative_dpo(section, base, output_dir=tmp_path, evaluate=lambda m: calls.append(m) or {})
    (point,) = res["points"]  # rounds 2 and 3 never ran
    assert point["status"] == "failed" and point["nonfinite"]["step"] == 1 and point["eval"] is None
    assert calls == []


def test_prefopt_compare_exits_3_when_a_point_went_non_finite(tmp_path, nan_from_step, capsys):
    from prefopt.cli.compare import add_compare_commands

    nan_from_step(1)
    parser = argparse.ArgumentParser(prog="prefopt")
    add_compare_commands(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cmp"
    args = parser.parse_args(["compare", "--config", str(QUICK), "--output-dir", str(out), "--only", "dpo"])
    assert args.func(args) == 3
    assert "failed points: dpo-beta0.1-seed42, dpo-beta0.5-seed42" in capsys.readouterr().out
    summary = json.loads((out / "compare.json").read_text())
    assert all(p["status"] == "failed" and p["nonfinite"] for p in summary["points"])
    assert "failed: non-finite" in (out / "compare.md").read_text()
