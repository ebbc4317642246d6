"""Judges: a score per (prompt, reply), a verdict per pair, one registry, one ``judge:`` block.

A judge answers one or both of two questions:

* :meth:`Judge.score` — how good is each reply to its prompt (higher is better); ``None`` where the
  judge gave no usable score (a non-finite value, ``None`` from a function), counted as a failure;
* :meth:`Judge.compare` — for each pair (prompt, reply a, reply b), which is better: a :class:`Verdict`
  whose ``winner`` is ``"a"``, ``"b"``, ``"tie"`` or ``None`` (no verdict, with the reason:
  ``inconsistent``, ``unparseable`` or ``failed``). A verdict is never guessed.

Score judges (``callable``, ``reward_model``, ``ensemble``) compare by scoring both replies: the higher
score wins, and scores within ``tie_margin`` of each other are a tie. The ``llm`` judge is pairwise
only (it gives verdicts, asked in both orders, and no scores).

A judge that raises is stopped with a :class:`~prefopt.core.errors.PrefoptError` naming the judge, its
config key and the index of the prompt it failed on (a failing batch is re-run item by item to find
it).

Configured by a ``judge:`` block (:func:`build_judge`)::

    judge: {type: callable, function: "prefopt.world:TASKS.arith.reward"}
    judge: {type: reward_model, path: runs/rm/model, batch_size: 32}
    judge: {type: llm, model: builtin:tiny-arith, template: "..."}
    judge: {type: ensemble, combine: weighted_sum, weights: [1, 2], judges: [{...}, {...}]}
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefopt.core.errors import PrefoptError, did_you_mean

WINNERS = ("a", "b", "tie")
NO_VERDICT_REASONS = {
    "inconsistent": "the LLM judge preferred different replies when the order was swapped (position bias)",
    "unparseable": "the LLM judge's answer named neither reply (in at least one order)",
    "failed": "the judge gave no usable score for a reply (None or not finite)",
}


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one pair. ``winner`` is ``"a"``, ``"b"``, ``"tie"`` or ``None``; when it
    is ``None``, ``reason`` says why (a key of :data:`NO_VERDICT_REASONS`). Score judges fill
    ``scores``; the LLM judge fills ``positions`` (the label it chose with a first, then with b first:
    ``"A"``, ``"B"``, ``"tie"`` or ``None`` when unparseable) and ``raw`` (its two answers)."""

    winner: str | None
    reason: str | None = None
    scores: tuple[float | None, float | None] | None = None
    positions: tuple[str | None, str | None] | None = None
    raw: tuple[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"winner": self.winner}
        for key in ("reason", "scores", "positions", "raw"):
            value = getattr(self, key)
            if value is not None:
                d[key] = list(value) if isinstance(value, tuple) else value
        return d


def tally(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """Counts of each outcome: ``a``, ``b``, ``tie`` and each no-verdict reason (always all keys)."""
    c: Counter[str] = Counter()
    for v in verdicts:
        c[v.winner if v.winner is not None else (v.reason or "failed")] += 1
    return {k: int(c.get(k, 0)) for k in (*WINNERS, *NO_VERDICT_REASONS)} | {
        k: int(n) for k, n in c.items() if k not in WINNERS and k not in NO_VERDICT_REASONS
    }


def verdict_from_scores(sa: float | None, sb: float | None, tie_margin: float = 0.0) -> Verdict:
    if sa is None or sb is None:
        return Verdict(None, "failed", scores=(sa, sb))
    if abs(sa - sb) <= tie_margin:
        return Verdict("tie", scores=(sa, sb))
    return Verdict("a" if sa > sb else "b", scores=(sa, sb))


def clean_score(value: Any) -> float | None:
    """A judge's raw score → float, or None when it is missing or not finite (counted as a failure)."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


class Judge:
    """Base class. ``name`` identifies the judge in provenance and reports; ``where`` is its config key."""

    type: str = "judge"
    gives_scores: bool = True

    def __init__(self, name: str, *, where: str = "judge", tie_margin: float = 0.0):
        self.name = name
        self.where = where
        self.tie_margin = float(tie_margin)

    def describe(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name}

    # -- scores ----------------------------------------------------------------------------------
    def score(
        self, prompts: Sequence[Any], replies: Sequence[Any], *, indices: Sequence[int] | None = None
    ) -> list[float | None]:
        """One score per (prompt, reply); ``indices`` are the prompt indices errors should name."""
        if len(prompts) != len(replies):
            raise ValueError("prompts and replies differ in length")
        if not self.gives_scores:
            raise PrefoptError(
                f'the {self.type} judge "{self.name}" compares pairs and gives no score per reply.',
                where=self.where,
                fix="use it where pairs are compared (win rate, pairs of replies), or use a reward_model, "
                "callable or ensemble judge where scores are needed.",
            )
        indices = list(range(len(prompts))) if indices is None else list(indices)
        raw = self.guarded(self._score, list(prompts), list(replies), indices=indices)
        return [clean_score(x) for x in raw]

    def _score(self, prompts: list, replies: list) -> list:
        raise NotImplementedError

    # -- verdicts --------------------------------------------------------------------------------
    def compare(
        self, prompts: Sequence[Any], replies_a: Sequence[Any], replies_b: Sequence[Any]
    ) -> list[Verdict]:
        """A verdict per pair. Score judges score a and b and compare (``tie_margin``)."""
        n = len(prompts)
        if len(replies_a) != n or len(replies_b) != n:
            raise ValueError("prompts, replies_a and replies_b differ in length")
        scores = self.score(list(prompts) * 2, list(replies_a) + list(replies_b), indices=list(range(n)) * 2)
        return [verdict_from_scores(scores[i], scores[n + i], self.tie_margin) for i in range(n)]

    # -- errors ----------------------------------------------------------------------------------
    def guarded(self, fn: Callable[[list, list], list], *columns: list, indices: Sequence[int]) -> list:
        """Run ``fn(*columns)``; when it raises, find the item that fails and raise a PrefoptError
        naming this judge and that item's prompt index."""
        try:
            out = list(fn(*columns))
        except PrefoptError:
            raise
        except Exception as err:  # noqa: BLE001 - turned into a message naming the judge and the prompt
            n = len(columns[0])
            if n > 1:
                for j in range(n):
                    try:
                        fn(*[[c[j]] for c in columns])
                    except PrefoptError:
                        raise
                    except Exception as item_err:  # noqa: BLE001
                        raise self._failure(item_err, indices[j], columns[0][j]) from item_err
            raise self._failure(
                err, indices[0] if n == 1 else None, columns[0][0] if n == 1 else None
            ) from err
        if len(out) != len(columns[0]):
            raise PrefoptError(
                f'judge "{self.name}" returned {len(out)} results for {len(columns[0])} inputs.',
                where=self.where,
                fix="a batched judge function must return one score per (prompt, reply).",
            )
        return out

    def _failure(self, err: Exception, index: int | None, prompt: Any) -> PrefoptError:
        at = (
            f"on prompt {index} ({_short(prompt)})"
            if index is not None
            else "on a batch (no single item fails)"
        )
        return PrefoptError(
            f'judge "{self.name}" raised {type(err).__name__}: {err} {at}.',
            where=self.where,
            fix="fix the judge (or the prompt it failed on); rerun with --debug for the traceback.",
        )


def _short(x: Any, n: int = 60) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


# ------------------------------------------------------------------------------------------ registry
class JudgeSection(BaseModel):
    """Keys every judge takes."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(..., description="callable | reward_model | llm | ensemble")
    name: str | None = Field(None, description="A name for reports and provenance (default: derived).")
    tie_margin: float = Field(0.0, ge=0, description="Score judges: scores this close are a tie.")


JudgeBuilder = Callable[..., Judge]
_TYPES: dict[str, tuple[type[JudgeSection], JudgeBuilder]] = {}


def register_judge_type(name: str, section: type[JudgeSection]) -> Callable[[JudgeBuilder], JudgeBuilder]:
    """Register ``builder(config, *, where, base_dir) -> Judge`` for ``judge: {type: name, ...}``."""

    def deco(builder: JudgeBuilder) -> JudgeBuilder:
        _TYPES[name] = (section, builder)
        return builder

    return deco


BUILTIN_TYPES = ("callable_judge", "ensemble", "llm", "reward_model")
"""The modules of :mod:`prefopt.judge` that register the builtin judge types."""


def _builtin_types() -> None:
    # registry plugin loading: the judge modules import this one, so they are loaded by name
    for module in BUILTIN_TYPES:
        importlib.import_module(f"prefopt.judge.{module}")


def judge_types() -> list[str]:
    _builtin_types()
    return sorted(_TYPES)


def parse_judge_config(data: Any, where: str = "judge") -> JudgeSection:
    """Validate a ``judge:`` block (recursively for ensembles) without loading anything."""
    _builtin_types()
    if data is None:
        raise PrefoptError(
            "no judge is configured.",
            where=where,
            fix=f'add a judge block, e.g. `judge: {{type: callable, function: "module:function"}}` '
            f"(types: {', '.join(sorted(_TYPES))}).",
        )
    if isinstance(data, JudgeSection):
        return data
    if not isinstance(data, dict):
        raise PrefoptError(f"the judge block is a {type(data).__name__}, not a mapping.", where=where)
    kind = data.get("type")
    if kind is None:
        raise PrefoptError(
            'missing required key "type".',
            where=where,
            fix=f"set type to one of: {', '.join(sorted(_TYPES))}.",
        )
    if kind not in _TYPES:
        raise PrefoptError(
            f'unknown judge type "{kind}".{did_you_mean(str(kind), _TYPES)}',
            where=f"{where}.type",
            fix=f"choose one of: {', '.join(sorted(_TYPES))}.",
        )
    section, _ = _TYPES[kind]
    try:
        cfg = section(**data)
    except ValidationError as err:
        raise explain_validation(err, section, where) from None
    check = getattr(cfg, "check", None)
    if check is not None:
        check(where)
    return cfg


def explain_validation(err: ValidationError, section: type[BaseModel], where: str) -> PrefoptError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            options = list(section.model_fields)
            lines.append(
                f'unknown key "{where}.{key}" for a {section.model_fields["type"].default or "judge"} judge.'
                f"{did_you_mean(str(e['loc'][-1]), options)} Allowed: {', '.join(options)}."
            )
        elif e["type"] == "missing":
            lines.append(f'missing required key "{where}.{key}".')
        else:
            lines.append(f'"{where}.{key}" = {e.get("input")!r}: {e["msg"].removeprefix("Value error, ")}.')
    return PrefoptError(" ".join(lines), where=where)


def build_judge(data: Any, *, where: str = "judge", base_dir: str | None = None) -> Judge:
    """The judge a ``judge:`` block describes (validated first; paths relative to ``base_dir``)."""
    cfg = parse_judge_config(data, where)
    _, builder = _TYPES[cfg.type]
    return builder(cfg, where=where, base_dir=base_dir)
