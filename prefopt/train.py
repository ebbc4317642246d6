"""Moved to :mod:`prefopt.pipeline.run`; kept for one release (import from there)."""

from prefopt.core.runtime import is_main_process, world_size  # noqa: F401
from prefopt.data.tokenized import prepare_data  # noqa: F401
from prefopt.model.loading import load_reference
from prefopt.pipeline.run import *  # noqa: F403
from prefopt.training.build import build_trainer, save_model, settle_on_data, trainer_columns  # noqa: F401
from prefopt.training.plan import dry_run, resolve_batch  # noqa: F401
from prefopt.world import task_of as world_task_of  # noqa: F401


def reference_for(recipe):
    """The starting model of ``recipe`` (now :func:`prefopt.model.loading.load_reference`)."""
    return load_reference(recipe.model, seed=recipe.seed)
