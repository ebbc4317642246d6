"""Functions the judge tests name as ``judge_helpers:...`` (tests/judge is on sys.path)."""

from __future__ import annotations

import hashlib
import math

NOT_A_FUNCTION = 3
TABLE = {"nested": {"score": lambda prompt, reply: float(len(reply))}}


def length(prompt, reply, scale: float = 1.0) -> float:
    return scale * len(reply)


def lengths_batched(prompts, replies) -> list[float]:
    return [float(len(r)) for r in replies]


def raises_on_bad(prompt, reply) -> float:
    if prompt == "bad":
        raise ValueError("cannot score this one")
    return 1.0


def batched_raises_on_bad(prompts, replies) -> list[float]:
    if "bad" in prompts:
        raise RuntimeError("batch contains a bad prompt")
    return [1.0] * len(prompts)


def unusable(prompt, reply):
    """None for 'none', NaN for 'nan', otherwise the length."""
    return {"none": None, "nan": math.nan, "inf": math.inf}.get(reply, float(len(reply)))


def gumbel(key: str) -> float:
    """A deterministic Gumbel(0, 1) draw keyed by a string."""
    u = (int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) + 0.5) / 16**12
    return -math.log(-math.log(u))


def prefers_longer(prompt, reply) -> float:
    """Quality-blind and length-loving: P(a beats b) = σ((len a − len b) / 2), exactly (the difference of
    two Gumbel draws is logistic)."""
    return len(reply) / 2.0 + gumbel(f"{prompt}|{reply}")


def length_blind(prompt, reply) -> float:
    """A judge that ignores length: a coin per (prompt, reply)."""
    return gumbel(f"{prompt}|{reply}|blind")
