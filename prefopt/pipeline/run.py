"""The training pipeline behind ``prefopt train`` and ``scripts/train.py`` (one code path).

recipe → run dir (locked, identity checked, resolved.yaml; :mod:`prefopt.pipeline.rundir`) → canonical data (+ drop report) → prefopt tokenisation →
model (+ LoRA/4-bit) → adapter → TRL trainer → :func:`prefopt.training.fit.fit` → model in
safetensors, metrics.jsonl, manifest.json → evaluation (eval.json) → report.md. Each arrow is one
function below (:func:`open_run_dir`, :func:`load_run_data`, :func:`fit_recipe`, :func:`run_summary`,
:func:`finish_run`); :func:`train` runs them in order.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prefopt.config.recipe import Recipe, dump_resolved
from prefopt.core.hashing import dataset_fingerprint
from prefopt.core.runtime import is_main_process, wait_for_everyone, world_size
from prefopt.data.tokenized import prepare_data
from prefopt.evaluate.metrics import evaluate_models
from prefopt.evaluate.report import write_report
from prefopt.evaluate.reward_model import evaluate_reward_model
from prefopt.judge import build_judge, parse_judge_config
from prefopt.judge.generate_config import preflight_judge
from prefopt.judge.length import recipe_judge
from prefopt.model.loading import load_model, load_reference, tokenizer_for
from prefopt.pipeline import manifest, rundir
from prefopt.training import distinfo, refcache
from prefopt.training.algorithms import get_adapter
from prefopt.training.build import build_trainer, save_model, settle_on_data
from prefopt.training.callbacks import MetricsJsonlCallback
from prefopt.training.fit import FitResult, fit
from prefopt.training.health import HealthCallback, completion_lengths, probe_prompts_for
from prefopt.training.plan import resolve_batch
from prefopt.training.resilience import last_complete_checkpoint, remove_incomplete_checkpoints
from prefopt.training.resume import LossLedger, choose_checkpoint

log = logging.getLogger("prefopt")


@dataclass
class RunDir:
    """Where a run writes: the run directory, its checkpoints, and whether this process writes files."""

    path: Path
    main: bool
    identity: dict[str, Any] = field(default_factory=dict)  # run identity (recipe + data fingerprint)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"


@dataclass
class RunData:
    """A run's data: tokenised for the trainer, canonical (for checks and evaluation), and the report."""

    train_tok: Any
    eval_tok: Any
    train_ds: Any
    eval_ds: Any
    report: Any
    fingerprint: str = ""
    settings: dict[str, Any] | None = None  # what the algorithm settled from the rows (KTO's weights)
    recipe: Any = None  # the recipe with those settings filled in


def train(
    recipe: Recipe, *, output_dir: str | None = None, overwrite: bool = False, resume: bool = False
) -> dict:
    """Run one recipe end to end. Returns a summary dict (also in manifest.json).

    A non-finite loss raises :class:`~prefopt.core.errors.NonFiniteError` (exit 3) and a signal
    :class:`~prefopt.core.errors.TrainingInterrupted`, after manifest.json records the run as failed /
    interrupted (:func:`prefopt.training.fit.fit`).

    The run directory is locked for the whole run and checked first (:mod:`prefopt.pipeline.rundir`)."""
    path = rundir.run_dir_for(recipe, output_dir, base=Path.cwd())
    where = "--output-dir" if output_dir else "output.dir"
    with rundir.session(path, main=is_main_process(), where=where):
        return _train(recipe, path, overwrite=overwrite, resume=resume)


def _train(recipe: Recipe, path: Path, *, overwrite: bool, resume: bool) -> dict:
    t0 = time.time()
    adapter = get_adapter(recipe.algorithm)
    distinfo.check_launch(recipe)  # exit 2 when the process state lacks the launcher's mode (FSDP on CPU)
    run = open_run_dir(recipe, path, overwrite=overwrite, resume=resume)
    check_evaluation_judge(recipe)  # a judge that cannot work fails now, not after training
    training = resolve_batch(recipe)
    # data before weights: a malformed dataset fails in seconds, not after loading a 7B model
    tokenizer = tokenizer_for(recipe.model)
    data = load_run_data(recipe, tokenizer, run)
    recipe = data.recipe
    judge = recipe_judge(recipe, tokenizer)  # online algorithms: exit 2 on a bad online.judge, before weights
    resume_from = _resume_point(run.checkpoints, resume, run.identity)  # before the weights: disk checks only
    # The TRL config exists before the model is loaded so that DeepSpeed ZeRO-3 (accelerate launch with
    # zero3.yaml) can shard the weights while they load.
    config = adapter.trl_config(recipe, output_dir=str(run.checkpoints), training=training)
    model, tokenizer = load_model(
        recipe.model, seed=recipe.seed, tokenizer=tokenizer, num_labels=adapter.spec.num_labels
    )
    result = fit_recipe(recipe, run, data, model, tokenizer, config, resume_from=resume_from, judge=judge)
    if not result.finished:
        record_unfinished(run, result)
        result.raise_for_status()
    summary = run_summary(recipe, run, result, data, training, seconds=time.time() - t0)
    if recipe.output.save_model:
        save_model(result.trainer, tokenizer, run.path / "model")
    if run.main:
        finish_run(recipe, run, result, tokenizer, data, summary)
    result.trainer.accelerator.wait_for_everyone()
    return summary


def open_run_dir(recipe: Recipe, path: Path, *, overwrite: bool, resume: bool) -> RunDir:
    """The run directory (``--output-dir``, else ``output.dir`` resolved; :func:`rundir.run_dir_for`),
    prepared by rank 0 (:func:`rundir.prepare`: the run identity checked against what is there,
    ``--overwrite`` empties it), with resolved.yaml written into it."""
    run = RunDir(path, is_main_process())
    if run.main:
        refcache.check_cache_dir(recipe)
        run.identity = rundir.prepare(
            path, recipe, overwrite=overwrite or recipe.output.overwrite, resume=resume
        )
        (path / "resolved.yaml").write_text(dump_resolved(recipe))
    return run


def load_run_data(recipe: Recipe, tokenizer, run: RunDir) -> RunData:
    """Canonical and tokenised data, checked against the run's recorded data, the drop report saved
    (data_report.json) and printed, the algorithm's settings from the training rows (KTO's weights)."""
    train_tok, eval_tok, train_ds, eval_ds, report = prepare_data(recipe, tokenizer)
    fingerprint = dataset_fingerprint(train_ds)
    if run.main:
        rundir.check_data(run.path, fingerprint, run.identity)
        run.identity["data_fingerprint"] = fingerprint
        rundir.record_identity(run.path, {k: run.identity[k] for k in ("sha256", "parts")}, fingerprint)
        report.save(run.path / "data_report.json")
        print(report.summary())
    settled, settings = settle_on_data(recipe, train_ds)
    return RunData(train_tok, eval_tok, train_ds, eval_ds, report, fingerprint, settings, settled)


def fit_recipe(
    recipe: Recipe,
    run: RunDir,
    data: RunData,
    model,
    tokenizer,
    config,
    *,
    resume_from: Path | None,
    judge=None,
) -> FitResult:
    """The trainer with prefopt's callbacks (metrics.jsonl, health), trained by :func:`fit` with
    checkpoints (identity and loss so far in each marker), resume and signal handling."""
    ledger = LossLedger(run.identity)
    ledger.resume_from(resume_from)
    metrics = MetricsJsonlCallback(run.path / "metrics.jsonl")
    health = HealthCallback.from_recipe(
        recipe,
        metrics.write,
        probe_prompts=probe_prompts_for(recipe, data.eval_ds, data.train_ds),
        completion_lengths=completion_lengths(data.train_tok),
    )
    trainer = build_trainer(
        recipe,
        model,
        tokenizer,
        data.train_tok,
        data.eval_tok,
        output_dir=str(run.checkpoints),
        callbacks=[metrics, health],
        config=config,
    )
    if judge is not None:
        trainer.judge = judge  # online DPO ranks its samples with it (prefopt.training.online)
    health.attach(trainer)
    ledger.attach(trainer)
    result = fit(
        trainer,
        checkpoints=run.checkpoints,
        resume_from=resume_from,
        handle_signals=True,
        metrics_writer=metrics.write,
        marker_extra=ledger.marker_fields,
    )
    result.train_loss = ledger.train_loss(result.global_step, result.output)  # over the whole run
    return result


def record_unfinished(run: RunDir, result: FitResult) -> None:
    """manifest.json of a run that stopped: failed (non-finite) or interrupted (a signal)."""
    if not run.main:
        return
    if result.nonfinite is not None:
        step, term, _ = result.nonfinite
        record = {"status": "failed", "reason": f"non-finite {term}", "step": step}
    else:
        record = {
            "status": "interrupted",
            "step": result.global_step,
            "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        }
    manifest.write_json(run.path / "manifest.json", record)


def run_summary(
    recipe: Recipe, run: RunDir, result: FitResult, data: RunData, training: dict, *, seconds: float
) -> dict[str, Any]:
    """What manifest.json records about a finished run."""
    adapter = get_adapter(recipe.algorithm)
    summary: dict[str, Any] = {
        "status": "finished",
        "run_dir": str(run.path),
        "algorithm": recipe.algorithm,
        "trainer": adapter.describe(recipe)["trainer"],
        "seed": recipe.seed,
        "global_step": result.global_step,
        "train_loss": result.train_loss,
        "train_runtime_s": round(seconds, 2),
        "data_fingerprint": data.fingerprint,
        "data": {
            "train_rows": len(data.train_tok),
            "eval_rows": len(data.eval_tok) if data.eval_tok is not None else 0,
        },
        "prefopt_overrides": adapter.overrides(recipe),
        "versions": manifest.versions(),
        "git_commit": manifest.git_commit(),
        "hardware": manifest.hardware(),
        "world_size": world_size(),
        "effective": {
            k: training.get(k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps")
        },
    }
    if data.settings:
        summary["data_settings"] = data.settings  # e.g. KTO's weights and the label counts behind them
    summary["distributed"] = distinfo.describe(result.trainer, adapter.uses_reference)  # engine, reference
    events = getattr(result.trainer, "reference_cache_events", None)
    if events:
        summary["reference_cache"] = events  # hit/miss, key and seconds for each dataset
    return summary


def finish_run(
    recipe: Recipe, run: RunDir, result: FitResult, tokenizer, data: RunData, summary: dict
) -> None:
    """Rank 0, after training: evaluation (eval.json), manifest.json, the report."""
    evaluation = run_evaluation(recipe, result.trainer.model, tokenizer, data.eval_ds)
    if evaluation:
        manifest.write_json(run.path / "eval.json", evaluation)
        summary["eval"] = evaluation
    manifest.write_json(run.path / "manifest.json", summary)
    try:
        write_report(run.path)
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not fail a finished run
        log.warning("could not write the report: %s", exc)


def _resume_point(ckpt_dir: Path, resume: bool, identity: dict | None = None) -> Path | None:
    """The last complete, intact checkpoint to resume from, or None. Re-running the same command into
    the same output dir resumes too (the run is unfinished and has a checkpoint); incomplete
    checkpoints (a kill while saving) are removed first, damaged ones moved aside
    (:func:`prefopt.training.resume.choose_checkpoint`)."""
    if is_main_process():
        removed = remove_incomplete_checkpoints(ckpt_dir)
        if removed:
            log.warning("removed incomplete checkpoint(s) %s (interrupted while saving)", ", ".join(removed))
        choose_checkpoint(ckpt_dir, identity)
    wait_for_everyone()
    last = last_complete_checkpoint(ckpt_dir)
    if resume and last is None:
        log.warning("--resume: no complete checkpoint in %s; starting from the beginning", ckpt_dir)
    if last is not None:
        log.warning("resuming from %s", last)
    return last


def _judge_base(recipe: Recipe) -> str | None:
    return str(recipe.source_path.parent) if recipe.source_path else None


def _preflight(recipe: Recipe, block, key: str) -> None:
    where = f"{recipe.source_path}: {key}" if recipe.source_path else key
    preflight_judge(parse_judge_config(block, where), where, _judge_base(recipe))


def check_evaluation_judge(recipe: Recipe) -> None:
    """``evaluation.judge``: validated and checked as far as it can be without loading weights (a
    callable's function imports, a reward model's checkpoint has a one-logit head)."""
    if recipe.evaluation.judge and recipe.evaluation.enabled:
        _preflight(recipe, recipe.evaluation.judge, "evaluation.judge")


def check_judges(recipe: Recipe) -> None:
    """Every judge a recipe names (``online.judge``, ``evaluation.judge``), checked without loading any
    weights: what ``prefopt train --dry-run`` runs."""
    if getattr(recipe, "online", None) is not None:
        _preflight(recipe, recipe.online.judge, "online.judge")
    check_evaluation_judge(recipe)


def run_evaluation(recipe: Recipe, model, tokenizer, eval_ds) -> dict | None:
    """End-of-training evaluation (:func:`prefopt.evaluate.metrics.evaluate_models`): held-out preference
    accuracy and margins, log-prob shifts, KL to the starting model on samples, lengths, and the
    ground-truth world's true reward when the data comes from it."""
    if not recipe.evaluation.enabled:
        return None

    model.eval()
    if get_adapter(recipe.algorithm).spec.num_labels is not None:  # a reward model: pairs ranked, κ
        return evaluate_reward_model(model, tokenizer, recipe, eval_ds)
    judge = None
    if recipe.evaluation.judge:
        judge = build_judge(recipe.evaluation.judge, where="evaluation.judge", base_dir=_judge_base(recipe))
    with torch.no_grad():
        reference = load_reference(recipe.model, seed=recipe.seed)
        return evaluate_models(model, reference, tokenizer, recipe, eval_ds, judge=judge)
