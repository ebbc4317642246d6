"""A TRL trainer for a recipe: the adapter's TRL config and trainer subclass, the trainer's columns, the
reference (an in-memory copy for builtin models, the reference cache when enabled), and the final save."""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from peft import PeftModel

from prefopt.config.recipe import Recipe
from prefopt.core.runtime import is_main_process
from prefopt.training import refcache
from prefopt.training.algorithms import get_adapter

log = logging.getLogger("prefopt")


def trainer_columns(ds, kind: str, extra: tuple[str, ...] = ()):
    keep = (
        ["prompt_ids", "chosen_ids", "rejected_ids"]
        if kind == "paired"
        else ["prompt_ids", "completion_ids", "label"]
    ) + list(extra)
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
    adapter = get_adapter(recipe.algorithm)
    if config is None:
        if adapter.depends_on_data(recipe):  # API callers that did not settle: the tokenised rows will do
            recipe, _ = settle_on_data(recipe, train_tok)
        config = adapter.trl_config(recipe, output_dir=output_dir, training=training)
    cls = adapter.trainer_class(recipe)
    kwargs: dict[str, Any] = {
        "model": model,
        "args": config,
        "train_dataset": trainer_columns(train_tok, adapter.data_kind, adapter.extra_columns(recipe)),
        "eval_dataset": (
            trainer_columns(eval_tok, adapter.data_kind, adapter.extra_columns(recipe))
            if eval_tok is not None
            else None
        ),
        "processing_class": tokenizer,
        "callbacks": callbacks or [],
        "prefix_sharing": recipe.training.get("prefix_sharing", "auto"),
    }
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
    kwargs.update(adapter.trainer_kwargs(recipe))
    return cls(**kwargs)


def settle_on_data(recipe: Recipe, train_ds) -> tuple[Recipe, dict[str, Any] | None]:
    """The adapter's data-dependent settings (KTO's weights from the label counts), said once: the
    decision is logged, a weight outside the paper's rule is a warning."""
    recipe, info = get_adapter(recipe.algorithm).settle_on_data(recipe, train_ds)
    if info and is_main_process():
        if info.get("warning"):
            log.warning(info["warning"])
        else:
            detail = ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("warning", "source"))
            log.info("%s settings from the training data (%s): %s", recipe.algorithm, info["source"], detail)
    return recipe, info


def save_model(trainer, tokenizer, path: Path) -> None:
    """Final model (full weights or the PEFT adapter) in safetensors, with the tokenizer.

    Called on every rank: ``Trainer.save_model`` gathers ZeRO-3 / FSDP shards and writes on rank 0.
    Written under a temporary name and renamed, so an interrupted save never looks finished."""
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_model(str(tmp))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    trainer.accelerator.wait_for_everyone()


def starting_checkpoint(recipe, run_dir: Path, policy) -> str:
    """A directory holding the starting policy's weights (TRL loads the reference from it)."""
    path = getattr(policy.config, "_name_or_path", "") or ""
    if path and os.path.isdir(path):
        return path
    out = run_dir / "reference"
    policy.save_pretrained(out, safe_serialization=True)
    policy.config._name_or_path = str(out)
    return str(out)
