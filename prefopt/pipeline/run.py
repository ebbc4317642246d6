"""The training pipeline behind ``prefopt train`` and ``scripts/train.py`` (one code path).

recipe → run dir (resolved.yaml) → canonical data (+ drop report) → prefopt tokenisation →
model (+ LoRA/4-bit) → adapter → TRL trainer → train → model in safetensors, metrics.jsonl,
manifest.json → evaluation (eval.json).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from prefopt.config.recipe import Recipe, dump_resolved
from prefopt.core.errors import TrainingInterrupted
from prefopt.core.runtime import is_main_process, world_size
from prefopt.data.tokenized import prepare_data
from prefopt.evaluate.metrics import evaluate_models
from prefopt.evaluate.report import write_report
from prefopt.model.loading import load_model, load_reference, tokenizer_for
from prefopt.pipeline import manifest
from prefopt.training.algorithms import get_adapter
from prefopt.training.build import build_trainer, save_model
from prefopt.training.callbacks import MetricsJsonlCallback
from prefopt.training.health import HealthCallback, probe_prompts_for
from prefopt.training.plan import resolve_batch
from prefopt.training.resilience import (
    CheckpointMarkerCallback,
    NonFiniteError,
    NonFiniteGuard,
    SignalCallback,
    last_complete_checkpoint,
    remove_incomplete_checkpoints,
)

log = logging.getLogger("prefopt")


def train(
    recipe: Recipe, *, output_dir: str | None = None, overwrite: bool = False, resume: bool = False
) -> dict:
    """Run one recipe end to end. Returns a summary dict (also in manifest.json)."""

    t0 = time.time()
    adapter = get_adapter(recipe.algorithm)
    base = Path.cwd()
    run_dir = (
        Path(output_dir)
        if output_dir
        else manifest.resolve_run_dir(
            recipe.output.dir, algorithm=recipe.algorithm, seed=recipe.seed, base=base
        )
    )
    main = is_main_process()
    if main:
        manifest.prepare_run_dir(run_dir, overwrite=overwrite or recipe.output.overwrite, resume=resume)
        (run_dir / "resolved.yaml").write_text(dump_resolved(recipe))
    training = resolve_batch(recipe)
    ckpt_dir = run_dir / "checkpoints"
    # The TRL config exists before the model is loaded so that DeepSpeed ZeRO-3 (accelerate launch with
    # zero3.yaml) can shard the weights while they load.
    config = adapter.trl_config(recipe, output_dir=str(ckpt_dir), training=training)

    # data before weights: a malformed dataset fails in seconds, not after loading a 7B model
    tokenizer = tokenizer_for(recipe.model)
    train_tok, eval_tok, train_ds, eval_ds, report = prepare_data(recipe, tokenizer)
    if main:
        report.save(run_dir / "data_report.json")
        print(report.summary())
    adapter.check_data(recipe, train_ds, log)
    model, tokenizer = load_model(recipe.model, seed=recipe.seed, tokenizer=tokenizer)

    resume_from = _resume_point(ckpt_dir, resume)
    metrics = MetricsJsonlCallback(run_dir / "metrics.jsonl")
    health = HealthCallback.from_recipe(
        recipe, metrics.write, probe_prompts=probe_prompts_for(recipe, eval_ds, train_ds)
    )
    signals, guard = SignalCallback(), NonFiniteGuard()
    callbacks = [metrics, health, CheckpointMarkerCallback(), signals, guard]
    trainer = build_trainer(
        recipe,
        model,
        tokenizer,
        train_tok,
        eval_tok,
        output_dir=str(ckpt_dir),
        callbacks=callbacks,
        config=config,
    )
    health.attach(trainer)
    signals.install()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        signals.uninstall()
    if guard.tripped is not None:
        step, term, value = guard.tripped
        if main:
            metrics.write({"event": "nonfinite", "step": step, "term": term, "value": str(value)})
            manifest.write_json(
                run_dir / "manifest.json", {"status": "failed", "reason": f"non-finite {term}", "step": step}
            )
        raise NonFiniteError(step, term, value, last_complete_checkpoint(ckpt_dir))
    if signals.received is not None:
        last = last_complete_checkpoint(ckpt_dir)
        if main:
            manifest.write_json(
                run_dir / "manifest.json",
                {
                    "status": "interrupted",
                    "step": trainer.state.global_step,
                    "checkpoint": str(last) if last else None,
                },
            )
        raise TrainingInterrupted(signals.received, str(last) if last else None)

    summary: dict[str, Any] = {
        "status": "finished",
        "run_dir": str(run_dir),
        "algorithm": recipe.algorithm,
        "trainer": adapter.describe(recipe)["trainer"],
        "seed": recipe.seed,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_runtime_s": round(time.time() - t0, 2),
        "data_fingerprint": manifest.dataset_fingerprint(train_ds),
        "data": {"train_rows": len(train_tok), "eval_rows": len(eval_tok) if eval_tok is not None else 0},
        "prefopt_overrides": adapter.overrides(recipe),
        "versions": manifest.versions(),
        "git_commit": manifest.git_commit(),
        "hardware": manifest.hardware(),
        "world_size": world_size(),
        "effective": {
            k: training.get(k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps")
        },
    }
    events = getattr(trainer, "reference_cache_events", None)
    if events:
        summary["reference_cache"] = events  # hit/miss, key and seconds for each dataset
    if recipe.output.save_model:
        save_model(trainer, tokenizer, run_dir / "model")
    if main:
        evaluation = run_evaluation(recipe, trainer.model, tokenizer, eval_ds)
        if evaluation:
            manifest.write_json(run_dir / "eval.json", evaluation)
            summary["eval"] = evaluation
        manifest.write_json(run_dir / "manifest.json", summary)

        try:
            write_report(run_dir)
        except Exception as exc:  # noqa: BLE001 - a plotting problem must not fail a finished run
            log.warning("could not write the report: %s", exc)
    trainer.accelerator.wait_for_everyone()
    return summary


def _resume_point(ckpt_dir: Path, resume: bool) -> Path | None:
    """The last complete checkpoint to resume from, or None. Re-running the same command into the same
    output dir resumes too (the run is unfinished and has a checkpoint); incomplete checkpoints (a kill
    while saving) are removed first."""

    if is_main_process():
        removed = remove_incomplete_checkpoints(ckpt_dir)
        if removed:
            log.warning("removed incomplete checkpoint(s) %s (interrupted while saving)", ", ".join(removed))
    last = last_complete_checkpoint(ckpt_dir)
    if resume and last is None:
        log.warning("--resume: no complete checkpoint in %s; starting from the beginning", ckpt_dir)
    if last is not None:
        log.warning("resuming from %s", last)
    return last


def run_evaluation(recipe: Recipe, model, tokenizer, eval_ds) -> dict | None:
    """End-of-training evaluation (:func:`prefopt.evaluate.metrics.evaluate_models`): held-out preference
    accuracy and margins, log-prob shifts, KL to the starting model on samples, lengths, and the
    ground-truth world's true reward when the data comes from it."""
    if not recipe.evaluation.enabled:
        return None

    model.eval()
    with torch.no_grad():
        reference = load_reference(recipe.model, seed=recipe.seed)
        return evaluate_models(model, reference, tokenizer, recipe, eval_ds)
