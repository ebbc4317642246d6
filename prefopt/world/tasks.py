"""The world's tasks: prompts whose true reward is computable, and a fixed held-out split.

``arith``  two-number addition, ``"37+48="`` → ``"85"``; reward 1 for the exact answer.
``count``  a format/length-constrained answer: ``"count a 7:"`` → ``"aaaaaaa"``; reward 1 for exactly
           that many copies of the letter (off-by-one lengths are the typical mistake).

Held-out prompts are a fixed, hash-defined part of each task's prompt space, never used for the
warm start or for preference data.
"""

from __future__ import annotations

import hashlib
import random

from prefopt.core.errors import PrefoptError, did_you_mean


class Task:
    name: str

    def all_prompts(self) -> list[str]:
        raise NotImplementedError

    def answer(self, prompt: str) -> str:
        raise NotImplementedError

    def near_miss(self, prompt: str, rng: random.Random) -> str:
        raise NotImplementedError

    def reward(self, prompt: str, completion: str) -> float:
        return 1.0 if completion.strip() == self.answer(prompt) else 0.0

    def split(self, split: str) -> list[str]:
        """'train' or 'test' prompts: a fixed 15% of the prompt space is held out (by hash)."""
        out = []
        for p in self.all_prompts():
            held = int(hashlib.sha256(f"{self.name}|{p}".encode()).hexdigest(), 16) % 100 < 15
            if (split == "test") == held:
                out.append(p)
        return out


class ArithTask(Task):
    name = "arith"

    def __init__(self, max_operand: int = 49):
        self.max_operand = max_operand

    def all_prompts(self) -> list[str]:
        n = self.max_operand
        return [f"{a}+{b}=" for a in range(n + 1) for b in range(n + 1)]

    def answer(self, prompt: str) -> str:
        a, b = prompt.rstrip("=").split("+")
        return str(int(a) + int(b))

    def near_miss(self, prompt: str, rng: random.Random) -> str:
        true = int(self.answer(prompt))
        delta = rng.choice([-10, -2, -1, 1, 2, 10])
        wrong = true + delta
        return str(wrong if wrong >= 0 else true + abs(delta))


class CountTask(Task):
    name = "count"
    letters = "abcdefgh"

    def all_prompts(self) -> list[str]:
        return [f"count {c} {n}:" for c in self.letters for n in range(1, 13)]

    def answer(self, prompt: str) -> str:
        _, c, n = prompt.rstrip(":").split(" ")
        return c * int(n)

    def near_miss(self, prompt: str, rng: random.Random) -> str:
        _, c, n = prompt.rstrip(":").split(" ")
        k = max(1, int(n) + rng.choice([-2, -1, 1, 2]))
        if k == int(n):
            k += 1
        return c * k


TASKS: dict[str, Task] = {"arith": ArithTask(), "count": CountTask()}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise PrefoptError(
            f'unknown world task "{name}".{did_you_mean(name, TASKS)} Tasks: {", ".join(TASKS)}.',
            where="world task",
        )
    return TASKS[name]
