"""``prefopt compare``: a measured algorithm comparison on the ground-truth world (see :mod:`.runner`)."""

from prefopt.studies.compare.runner import *  # noqa: F403
from prefopt.studies.compare.runner import (  # noqa: F401
    CompareEvaluation,
    Measure,
    Sweep,
    TokenizedCache,
    WorldEvaluator,
    expand_grid,
    format_markdown,
    iterative_vs_offline,
    load_sweep,
    plan_sweep,
    plot_frontier,
    run_sweep,
    world_task,
)
