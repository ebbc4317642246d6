"""The second world's task: sort a short sequence of distinct letters.

``"sort d b e ="`` → ``" b d e"``: 3 to 5 distinct letters from ``a``–``j``; reward 1 for the exact
sorted sequence, else 0. A fixed 15 % of the prompt space (by hash) is held out: the SFT
demonstrations and the preference data come from the rest, the evaluator uses only held-out prompts.

Nothing here comes from prefopt: the task, its near-misses and its reward are this world's own.
"""

from __future__ import annotations

import hashlib
import itertools
import random

ALPHABET = "abcdefghij"
LENGTHS = (3, 4, 5)
HELD_OUT_PERCENT = 15


def prompt_of(letters: tuple[str, ...] | list[str]) -> str:
    return "sort " + " ".join(letters) + " ="


def letters_of(prompt: str) -> list[str]:
    return prompt.removeprefix("sort ").removesuffix(" =").split()


def answer_letters(prompt: str) -> list[str]:
    return sorted(letters_of(prompt))


def reply(letters: list[str]) -> str:
    """A reply as the data holds it: a leading space, then the letters (``" b d e"``)."""
    return " " + " ".join(letters)


def answer(prompt: str) -> str:
    return reply(answer_letters(prompt))


def reward(prompt: str, completion: str) -> float:
    """1 for exactly the sorted letters (whitespace-insensitive), else 0."""
    return 1.0 if completion.split() == answer_letters(prompt) else 0.0


def near_miss(prompt: str, rng: random.Random) -> str:
    """The sorted answer with one element wrong: one position holds another letter of the alphabet."""
    out = answer_letters(prompt)
    i = rng.randrange(len(out))
    out[i] = rng.choice([c for c in ALPHABET if c != out[i]])
    return reply(out)


def _held_out(prompt: str) -> bool:
    return int(hashlib.sha256(f"sort|{prompt}".encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def all_prompts() -> list[str]:
    return [prompt_of(p) for n in LENGTHS for p in itertools.permutations(ALPHABET, n)]


def split(name: str) -> list[str]:
    """'train' (85 % of the prompt space) or 'test' (the held-out 15 %)."""
    if name not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {name!r}")
    return [p for p in all_prompts() if _held_out(p) == (name == "test")]
