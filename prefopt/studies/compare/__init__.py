"""``prefopt compare``: a measured algorithm comparison on the ground-truth world (see :mod:`.runner`)."""

from prefopt.studies.compare.runner import (
    CompareEvaluation,
    Measure,
    Plan,
    Point,
    Sweep,
    WorldEvaluator,
    expand_grid,
    format_markdown,
    iterative_vs_offline,
    load_sweep,
    plan_sweep,
    plot_frontier,
    run_point,
    run_sweep,
    sorted_rows,
    world_task,
)

__all__ = [
    "CompareEvaluation",
    "Measure",
    "Plan",
    "Point",
    "Sweep",
    "WorldEvaluator",
    "expand_grid",
    "format_markdown",
    "iterative_vs_offline",
    "load_sweep",
    "plan_sweep",
    "plot_frontier",
    "run_point",
    "run_sweep",
    "sorted_rows",
    "world_task",
]
