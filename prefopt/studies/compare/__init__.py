"""``prefopt compare``: a measured algorithm comparison on the ground-truth world.

One sweep file runs a grid — algorithms × loss parameters (β, τ, λ, ...) × seeds — from base recipes,
optionally adds an RLHF baseline (Bradley-Terry reward model + RLOO, :mod:`prefopt.studies.rlhf`) and
iterative (online) DPO (:mod:`prefopt.studies.iterative`), and measures every point the same way:

* **true reward** of the trained policy on the world's held-out prompts, sampled (T = 1) and greedy
  (:func:`prefopt.world.evaluate_policy`);
* **KL(π ‖ π_ref)** to the world reference, estimated on the policy's own samples (nats/sequence);
* **held-out preference accuracy**: on pairs drawn from the world's *test* prompts
  (``preference_rows(task, n, split="test")``), the fraction whose chosen reply has the higher
  implicit reward log π(y|x) − log π_ref(y|x) (summed log-probs, :func:`prefopt.model.logprobs.sequence_logps`).
  The same β-free definition for every algorithm (also ORPO/SimPO/RLHF, which train without the
  reference), so the column compares policies, not loss scales; ``logp_accuracy`` is the ranking by
  log π alone;
* **wall time** (and process CPU time, which does not depend on how busy a shared machine is) and
  **peak memory** (resident set size sampled every 50 ms while the point runs; the CUDA peak too on
  a GPU).

Outputs, under the sweep's ``output`` directory: one run directory per point (``resolved.yaml``,
``metrics.jsonl``, ``point.json``, ``model/`` when ``save_models``), ``compare.json`` (everything),
``compare.md`` (the table, sorted by algorithm and parameter) and ``frontier.png`` (true reward vs KL,
one marker per algorithm, parameters annotated).

Sweep file (``configs/sweeps/world.yaml``)::

    base: ../recipes/quickstart/dpo.yaml         # default base recipe (relative to this file)
    grid:
      - {algorithm: dpo, base: ../recipes/quickstart/dpo.yaml, loss: {beta: [0.05, 0.1, 0.3]}}
      - {algorithm: ipo, base: ../recipes/quickstart/ipo.yaml, loss: {tau: [0.1, 0.25, 0.5]}}
    seeds: [0]
    rlhf: {...}               # prefopt.studies.rlhf.RLHFSection, a list of them, or null
    iterative_dpo: {rounds: 3, ...}   # prefopt.studies.iterative.IterativeDPOSection, or null
    output: runs/compare-world

List values under ``loss:`` / ``training:`` of a grid entry are swept (their product); scalars are
set on every point of the entry. Tokenised data is reused: points whose data section, data kind,
seed, tokenizer and length limits agree tokenise once (``reuse_tokenized``). Each point's recipe gets
``reference_cache.enabled: true`` (algorithms with a reference), so the reference log-prob cache
is used wherever the training code honours it.

* :mod:`.sweep` — the sweep file's schema and the grid expanded into validated recipes;
* :mod:`prefopt.studies.measure` — the one measurement applied to every point (shared with the studies
  the sweep runs beside its grid);
* :mod:`.runner` — the plan, each point's run (:func:`prefopt.training.fit.fit`), the side studies;
* :mod:`.tables` — compare.md and iterative vs offline DPO;
* :mod:`.plots` — frontier.png.
"""

from prefopt.studies.compare.plots import plot_frontier
from prefopt.studies.compare.runner import Plan, plan_sweep, run_point, run_sweep, world_identity
from prefopt.studies.compare.sweep import GridEntry, Point, Sweep, expand_grid, load_sweep
from prefopt.studies.compare.tables import format_markdown, iterative_vs_offline, sorted_rows
from prefopt.studies.measure import CompareEvaluation, Measure, WorldEvaluator, world_task

__all__ = [
    "CompareEvaluation",
    "GridEntry",
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
    "world_identity",
    "world_task",
]
