"""The world's true reward as a scorer: ``world_reward(prompt, completion)`` (the default scorer of
iterative DPO) and :class:`TrueReward`, a TRL reward function (logged, with weight 0, by the RLHF
baseline). The reward itself is each task's :meth:`prefopt.world.tasks.Task.reward`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from prefopt.world.tasks import TASKS, get_task


@cache
def _prompt_tasks() -> dict[str, Any]:
    return {p: t for t in TASKS.values() for p in t.all_prompts()}


def world_reward(prompt: str, completion: str) -> float:
    """The ground-truth world's true reward of ``completion`` for ``prompt`` (the task is found from the
    prompt; 1.0 for the exact answer, else 0.0)."""
    task = _prompt_tasks().get(prompt)
    if task is None:
        raise ValueError(f"world_reward: {prompt!r} is not a prompt of any world task")
    return task.reward(prompt, completion)


class TrueReward:
    """The world task's true reward as a TRL reward function (logged with weight 0)."""

    __name__ = "true_reward"

    def __init__(self, task: str):
        self.task = get_task(task)

    def __call__(self, prompts=None, completions=None, **_):
        return [self.task.reward(p, c) for p, c in zip(prompts, completions)]
