"""The training pipeline behind ``prefopt train`` and ``scripts/train.py`` (one code path).

recipe → run dir (resolved.yaml) → canonical data (+ drop report) → prefopt tokenisation →
model (+ LoRA/4-bit) → adapter → TRL trainer → train → model in safetensors, metrics.jsonl,
manifest.json → evaluation (eval.json).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from prefopt.errors import PrefoptError
from prefopt.recipe import Recipe, dump_resolved

log = logging.getLogger("prefopt")


def _state():
    import os

    from accelerate import PartialState

    # Under `accelerate launch` on CPU the processes only join a gloo group when told to use the CPU
    # (ACCELERATE_USE_CPU); without it PartialState would report a world of 1 and the global batch
    # would be derived for the wrong number of processes.
    cpu = (
        os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        or not torch.cuda.is_available()
    )
    return PartialState(cpu=cpu)


def world_size() -> int:
    return _state().num_processes


def is_main_process() -> bool:
    return _state().is_main_process


def resolve_batch(recipe: Recipe, n_processes: int | None = None) -> dict[str, Any]:
    """Apply ``training.global_batch_size``: derive gradient accumulation from the per-device batch and
    the number of processes, refusing combinations that cannot hit the global batch exactly."""
    t = dict(recipe.training)
    gbs = t.pop("global_batch_size", None)
    n = n_processes if n_processes is not None else world_size()
    per_device = int(t.get("per_device_train_batch_size", 8))
    if gbs is None:
        return t
    if gbs % (per_device * n) != 0:
        options = [d for d in range(1, gbs + 1) if gbs % (d * n) == 0 and d <= 64]
        raise PrefoptError(
            f"training.global_batch_size = {gbs} cannot be reached with per_device_train_batch_size = "
            f"{per_device} on {n} process(es): {gbs} is not a multiple of {per_device} × {n}.",
            where="training.global_batch_size",
            fix=f"set training.per_device_train_batch_size to one of {options[-6:]} (or change the number of processes).",
        )
    ga = gbs // (per_device * n)
    given = t.get("gradient_accumulation_steps")
    if given is not None and given != ga:
        raise PrefoptError(
            f"training.gradient_accumulation_steps = {given} contradicts global_batch_size = {gbs} "
            f"(= {per_device} per device × {n} processes × {ga} accumulation steps).",
            where="training.gradient_accumulation_steps",
            fix="remove gradient_accumulation_steps: prefopt derives it from global_batch_size.",
        )
    t["gradient_accumulation_steps"] = ga
    return t


def prepare_data(recipe: Recipe, tokenizer, report_dir: Path | None = None):
    """Canonical data → tokenised datasets for the trainer. Returns (train, eval, canonical_eval, report)."""
    from prefopt.algorithms import get_adapter
    from prefopt.data.fast_tokenize import tokenize_dataset_fast
    from prefopt.data.transforms import prepare

    adapter = get_adapter(recipe.algorithm)
    base_dir = recipe.source_path.parent if recipe.source_path else None
    train_ds, eval_ds, report = prepare(
        recipe.data.train, recipe.data.eval, recipe.data, recipe.algorithm, base_dir, recipe.seed
    )
    max_length = recipe.training.get("max_length")
    max_prompt_length = recipe.training.get("max_prompt_length")
    # one process tokenises with worker processes; under accelerate every rank tokenises the same rows
    # itself (deterministic), without spawning more workers
    num_proc = None if world_size() == 1 else 1
    train_tok, _ = tokenize_dataset_fast(
        train_ds, adapter.data_kind, tokenizer, max_length, max_prompt_length, report, num_proc=num_proc
    )
    eval_tok = None
    if eval_ds is not None and len(eval_ds):
        eval_tok, _ = tokenize_dataset_fast(
            eval_ds, adapter.data_kind, tokenizer, max_length, max_prompt_length, report, num_proc=num_proc
        )
    if recipe.data.strict:  # truncation drops count too
        report.check_strict(where=f"{recipe.source_path or 'recipe'}: data (strict: true)")
    return train_tok, eval_tok, train_ds, eval_ds, report


def trainer_columns(ds, kind: str):
    keep = (
        ["prompt_ids", "chosen_ids", "rejected_ids"]
        if kind == "paired"
        else ["prompt_ids", "completion_ids", "label"]
    )
    return ds.select_columns([c for c in keep if c in ds.column_names])


def build_trainer(
    recipe: Recipe,
    model,
    tokenizer,
    train_tok,
    eval_tok,
    *,
    output_dir: str,
    callbacks=None,
    training: dict[str, Any] | None = None,
    config=None,
):
    """Adapter → TRL config → prefopt trainer subclass. Nothing else."""
    from peft import PeftModel

    from prefopt.algorithms import get_adapter

    adapter = get_adapter(recipe.algorithm)
    if config is None:
        if adapter.depends_on_data(recipe):  # API callers that did not settle: the tokenised rows will do
            recipe, _ = settle_on_data(recipe, train_tok)
        config = adapter.trl_config(recipe, output_dir=output_dir, training=training)
    cls = adapter.trainer_class(recipe)
    kwargs: dict[str, Any] = {
        "model": model,
        "args": config,
        "train_dataset": trainer_columns(train_tok, adapter.data_kind),
        "eval_dataset": trainer_columns(eval_tok, adapter.data_kind) if eval_tok is not None else None,
        "processing_class": tokenizer,
        "callbacks": callbacks or [],
        "prefix_sharing": recipe.training.get("prefix_sharing", "auto"),
    }
    from prefopt import refcache

    cache_kwargs = refcache.trainer_kwargs(recipe)
    if cache_kwargs:
        # the cache feeds TRL's precompute path: no reference copy is kept in memory
        config.precompute_ref_log_probs = True
        kwargs.update(cache_kwargs)
    needs_copy = recipe.model.name.startswith("builtin:")
    if (
        adapter.uses_reference
        and needs_copy
        and not isinstance(model, PeftModel)
        and not getattr(config, "precompute_ref_log_probs", False)
    ):
        # TRL loads the reference from the policy's checkpoint path (sharded under ZeRO-3); builtin
        # models have no checkpoint, so they get an in-memory copy.
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        kwargs["ref_model"] = ref
    if recipe.algorithm == "orpo":
        kwargs["nll_on_prompt"] = recipe.loss_params.nll_on_prompt
    if recipe.algorithm in ("dpo", "ipo"):
        lp = recipe.loss_params
        if recipe.algorithm == "dpo" and lp.label_smoothing > 0:
            kwargs["prefopt_loss"] = {"kind": "dpo", "label_smoothing": lp.label_smoothing}
        elif recipe.algorithm == "ipo" and not lp.length_normalize:
            kwargs["prefopt_loss"] = {"kind": "ipo", "length_normalize": False}
    return cls(**kwargs)


def train(
    recipe: Recipe, *, output_dir: str | None = None, overwrite: bool = False, resume: bool = False
) -> dict:
    """Run one recipe end to end. Returns a summary dict (also in manifest.json).

    The run directory is locked for the whole run and checked first (:mod:`prefopt.rundir`)."""
    from prefopt import rundir

    run_dir = rundir.run_dir_for(recipe, output_dir, base=Path.cwd())
    where = "--output-dir" if output_dir else "output.dir"
    with rundir.session(run_dir, main=is_main_process(), where=where):
        return _train(recipe, run_dir, overwrite=overwrite, resume=resume)


def _train(recipe: Recipe, run_dir: Path, *, overwrite: bool, resume: bool) -> dict:
    from prefopt import manifest, refcache, rundir
    from prefopt.algorithms import get_adapter
    from prefopt.callbacks import MetricsJsonlCallback
    from prefopt.errors import TrainingInterrupted
    from prefopt.health import HealthCallback, completion_lengths, probe_prompts_for
    from prefopt.models import load_model, tokenizer_for
    from prefopt.resilience import (
        CheckpointMarkerCallback,
        NonFiniteError,
        NonFiniteGuard,
        SignalCallback,
        last_complete_checkpoint,
    )
    from prefopt.resume import LossLedger, run_training

    t0 = time.time()
    adapter = get_adapter(recipe.algorithm)
    from prefopt import distinfo

    distinfo.check_launch(recipe)  # exit 2 when the process state lacks the launcher's mode (FSDP on CPU)
    main = is_main_process()
    identity: dict[str, Any] = {}
    if main:
        refcache.check_cache_dir(recipe)
        identity = rundir.prepare(
            run_dir, recipe, overwrite=overwrite or recipe.output.overwrite, resume=resume
        )
        (run_dir / "resolved.yaml").write_text(dump_resolved(recipe))
    training = resolve_batch(recipe)
    ckpt_dir = run_dir / "checkpoints"

    # data before weights: a malformed dataset fails in seconds, not after loading a 7B model
    tokenizer = tokenizer_for(recipe.model)
    train_tok, eval_tok, train_ds, eval_ds, report = prepare_data(recipe, tokenizer)
    fingerprint = manifest.dataset_fingerprint(train_ds)
    if main:
        rundir.check_data(run_dir, fingerprint, identity)
        identity["data_fingerprint"] = fingerprint
        rundir.record_identity(run_dir, {k: identity[k] for k in ("sha256", "parts")}, fingerprint)
        report.save(run_dir / "data_report.json")
        print(report.summary())
    recipe, data_settings = settle_on_data(recipe, train_ds)
    resume_from = _resume_point(ckpt_dir, resume, identity)  # before the weights: disk checks only
    # The TRL config exists before the model is loaded so that DeepSpeed ZeRO-3 (accelerate launch with
    # zero3.yaml) can shard the weights while they load.
    config = adapter.trl_config(recipe, output_dir=str(ckpt_dir), training=training)
    model, tokenizer = load_model(recipe.model, seed=recipe.seed, tokenizer=tokenizer)

    ledger = LossLedger(identity)
    ledger.resume_from(resume_from)
    metrics = MetricsJsonlCallback(run_dir / "metrics.jsonl")
    health = HealthCallback.from_recipe(
        recipe,
        metrics.write,
        probe_prompts=probe_prompts_for(recipe, eval_ds, train_ds),
        completion_lengths=completion_lengths(train_tok),
    )
    signals, guard = SignalCallback(), NonFiniteGuard()
    callbacks = [metrics, health, CheckpointMarkerCallback(extra=ledger.marker_fields), signals, guard]
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
    ledger.attach(trainer)
    signals.install()
    try:
        result = run_training(trainer, resume_from)  # None: the checkpoint had completed the training
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
        "train_loss": ledger.train_loss(trainer.state.global_step, result),  # over the whole run
        "train_runtime_s": round(time.time() - t0, 2),
        "data_fingerprint": fingerprint,
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
    if data_settings:
        summary["data_settings"] = data_settings  # e.g. KTO's weights and the label counts behind them
    summary["distributed"] = distinfo.describe(trainer, adapter.uses_reference)  # engine, reference
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
        from prefopt.report import write_report

        try:
            write_report(run_dir)
        except Exception as exc:  # noqa: BLE001 - a plotting problem must not fail a finished run
            log.warning("could not write the report: %s", exc)
    trainer.accelerator.wait_for_everyone()
    return summary


def _resume_point(ckpt_dir: Path, resume: bool, identity: dict | None = None) -> Path | None:
    """The last complete, intact checkpoint to resume from, or None. Re-running the same command into
    the same output dir resumes too (the run is unfinished and has a checkpoint); incomplete
    checkpoints (a kill while saving) are removed first, damaged ones moved aside
    (:func:`prefopt.resume.choose_checkpoint`)."""
    from prefopt.resilience import last_complete_checkpoint, remove_incomplete_checkpoints
    from prefopt.resume import choose_checkpoint

    if is_main_process():
        removed = remove_incomplete_checkpoints(ckpt_dir)
        if removed:
            log.warning("removed incomplete checkpoint(s) %s (interrupted while saving)", ", ".join(removed))
        choose_checkpoint(ckpt_dir, identity)
    _state().wait_for_everyone()
    last = last_complete_checkpoint(ckpt_dir)
    if resume and last is None:
        log.warning("--resume: no complete checkpoint in %s; starting from the beginning", ckpt_dir)
    if last is not None:
        log.warning("resuming from %s", last)
    return last


def save_model(trainer, tokenizer, path: Path) -> None:
    """Final model (full weights or the PEFT adapter) in safetensors, with the tokenizer.

    Called on every rank: ``Trainer.save_model`` gathers ZeRO-3 / FSDP shards and writes on rank 0.
    Written under a temporary name and renamed, so an interrupted save never looks finished."""
    import shutil

    tmp = path.with_name(path.name + ".tmp")
    trainer.save_model(str(tmp))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    trainer.accelerator.wait_for_everyone()


def settle_on_data(recipe: Recipe, train_ds) -> tuple[Recipe, dict[str, Any] | None]:
    """The adapter's data-dependent settings (KTO's weights from the label counts), said once: the
    decision is logged, a weight outside the paper's rule is a warning."""
    from prefopt.algorithms import get_adapter

    recipe, info = get_adapter(recipe.algorithm).settle_on_data(recipe, train_ds)
    if info and is_main_process():
        if info.get("warning"):
            log.warning(info["warning"])
        else:
            detail = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("warning", "source"))
            log.info("%s settings from the training data (%s): %s", recipe.algorithm, info["source"], detail)
    return recipe, info


def world_task_of(recipe: Recipe) -> str | None:
    for src in recipe.data.train:
        if src.source == "world":
            return src.options.get("task") or "arith"
    return None


def reference_for(recipe: Recipe):
    """The starting model (the reference for KL, also for reference-free algorithms)."""
    from prefopt.models import load_model

    ref_cfg = recipe.model.model_copy(update={"lora": None, "quantization": None})
    model, _ = load_model(ref_cfg, seed=recipe.seed, for_training=False)
    return model.eval()


def run_evaluation(recipe: Recipe, model, tokenizer, eval_ds) -> dict | None:
    """End-of-training evaluation (:func:`prefopt.evaluation.evaluate_models`): held-out preference
    accuracy and margins, log-prob shifts, KL to the starting model on samples, lengths, and the
    ground-truth world's true reward when the data comes from it."""
    if not recipe.evaluation.enabled:
        return None
    from prefopt.evaluation import evaluate_models

    model.eval()
    with torch.no_grad():
        return evaluate_models(model, reference_for(recipe), tokenizer, recipe, eval_ds)


def dry_run(recipe: Recipe, n_processes: int | None = None) -> dict:
    """What TRL will receive, without loading a model: trainer class, config, every loss parameter."""
    from prefopt.algorithms import get_adapter

    adapter = get_adapter(recipe.algorithm)
    training = resolve_batch(recipe, n_processes)
    data_settings = None
    if adapter.depends_on_data(recipe):  # settings from the data (KTO's weights): read it, no model
        from prefopt.data.transforms import prepare

        train_ds, _, _ = prepare(
            recipe.data.train,
            recipe.data.eval,
            recipe.data,
            recipe.algorithm,
            recipe.source_path.parent if recipe.source_path else None,
            recipe.seed,
        )
        recipe, data_settings = adapter.settle_on_data(recipe, train_ds)
    config = adapter.trl_config(recipe, output_dir="<run_dir>/checkpoints", training=training)
    desc = adapter.describe(recipe)
    if data_settings:
        desc["data_settings"] = data_settings
    n = n_processes if n_processes is not None else world_size()
    desc["processes"] = n
    desc["global_batch_size"] = config.per_device_train_batch_size * config.gradient_accumulation_steps * n
    desc["trl_config"] = {k: _jsonable(v) for k, v in sorted(config.to_dict().items())}
    desc["model"] = recipe.model.model_dump(mode="json")
    return desc


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return str(v)
