"""What TRL will be given for a recipe, before anything loads: the batch plan (``global_batch_size`` →
gradient accumulation) and ``prefopt train --dry-run``'s description of the trainer and its config."""

from __future__ import annotations

import json
from typing import Any

from prefopt.config.recipe import Recipe
from prefopt.core.errors import PrefoptError
from prefopt.core.runtime import world_size
from prefopt.data.transforms import prepare
from prefopt.training.algorithms import get_adapter


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


def dry_run(recipe: Recipe, n_processes: int | None = None) -> dict:
    """What TRL will receive, without loading a model: trainer class, config, every loss parameter."""
    adapter = get_adapter(recipe.algorithm)
    training = resolve_batch(recipe, n_processes)
    data_settings = None
    if adapter.depends_on_data(recipe):  # settings from the data (KTO's weights): read it, no model
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
