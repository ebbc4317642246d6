"""The ground-truth world: tasks whose true reward is computable, an imperfect SFT reference policy,
preference data drawn from it, and true-reward evaluation.

The classic study in miniature: SFT model → preference pairs → DPO (or IPO, KTO, ORPO, SimPO) →
compare the true reward of samples before and after. Everything ships as code; nothing is downloaded.

* :mod:`prefopt.world.tasks` — the tasks (``arith``, ``count``), their prompts and held-out split;
* :mod:`prefopt.world.rewards` — the true reward as a scorer and as a TRL reward function;
* :mod:`prefopt.world.reference` — the SFT warm start that makes the reference policy (``world:<task>``);
* :mod:`prefopt.world.data` — preference data drawn from the reference (``source: world``);
* :mod:`prefopt.world.evaluate` — true reward, length and KL on held-out prompts.

Importing this package registers ``source: world`` with :mod:`prefopt.data.registry` and the model
names ``world:<task>`` with :mod:`prefopt.model.loading`; those registries load it by name when a recipe
asks for either (:mod:`prefopt.core.plugins`).

From Python::

    from prefopt import world
    ref = world.reference_checkpoint("arith")            # builds + caches the SFT reference once
    pairs = world.preference_dataset("arith", size=2000)  # canonical paired rows (text format)
    world.evaluate_policy(model, tokenizer, "arith")      # {"reward_sampled": ..., "reward_greedy": ...}

From a recipe: ``model: {name: world:arith}`` and ``data: {train: [{source: world, task: arith, size: 2000}]}``.
"""

# moved to model/ and core/, kept here for one release: world.sample, world.generate, world.sequence_logps,
# world.torch_threads, world.cache_root
from prefopt.core.cache import cache_root
from prefopt.core.runtime import torch_threads
from prefopt.model.generation import generate, sample
from prefopt.model.logprobs import sequence_logps
from prefopt.world.data import (
    heldout_pairs,
    heldout_prompts,
    preference_dataset,
    preference_rows,
    read_world,
    task_of,
)
from prefopt.world.evaluate import evaluate_policy
from prefopt.world.reference import (
    DATA_VERSION,
    WARM_STARTS,
    WORLD_VERSION,
    WarmStart,
    demonstrations,
    reference_checkpoint,
    sft_sequence,
)
from prefopt.world.rewards import TrueReward, world_reward
from prefopt.world.tasks import TASKS, ArithTask, CountTask, Task, get_task

__all__ = [
    "cache_root",
    "generate",
    "sample",
    "sequence_logps",
    "torch_threads",
    "DATA_VERSION",
    "TASKS",
    "WARM_STARTS",
    "WORLD_VERSION",
    "ArithTask",
    "CountTask",
    "Task",
    "TrueReward",
    "WarmStart",
    "demonstrations",
    "evaluate_policy",
    "get_task",
    "heldout_pairs",
    "heldout_prompts",
    "preference_dataset",
    "preference_rows",
    "read_world",
    "reference_checkpoint",
    "sft_sequence",
    "task_of",
    "world_reward",
]
