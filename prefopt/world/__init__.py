"""The ground-truth world (see :mod:`prefopt.world.reference`)."""

from prefopt.world.reference import *  # noqa: F403
from prefopt.world.reference import (  # noqa: F401
    DATA_VERSION,
    TASKS,
    WARM_STARTS,
    WORLD_VERSION,
    cache_root,
    evaluate_policy,
    generate,
    get_task,
    preference_dataset,
    preference_rows,
    reference_checkpoint,
    sample,
    sequence_logps,
    torch_threads,
)
