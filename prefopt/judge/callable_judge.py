"""The ``callable`` judge: any Python function as a scorer, named ``module:attribute.path``.

The function takes ``(prompt, reply)`` and returns a number (higher is better), or with
``batched: true`` takes ``(prompts, replies)`` and returns one number per pair. ``kwargs:`` are passed
to every call. The part after the colon is a dotted path through attributes *or* mapping keys, so
the ground-truth world's true reward is::

    judge: {type: callable, function: "prefopt.world:TASKS.arith.reward"}

(``prefopt.world.TASKS["arith"].reward``, i.e. :meth:`prefopt.world.Task.reward`: 1 for the exact
answer, else 0). The function is resolved when the judge is built — an unknown module or attribute
is a PrefoptError naming ``judge.function`` — and a function that raises is stopped with the prompt
index it failed on.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from prefopt.core.errors import PrefoptError, did_you_mean
from prefopt.judge.base import Judge, JudgeSection, register_judge_type


class CallableSection(JudgeSection):
    type: Literal["callable"] = "callable"
    function: str = Field(
        ..., description='"module:function" (the path after ":" may cross attributes/keys).'
    )
    batched: bool = Field(
        False, description="The function takes lists (prompts, replies) and returns a list."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for every call.")


def resolve_function(spec: str, where: str = "judge.function") -> Callable:
    """``"pkg.module:obj.attr"`` → the object (attributes, or keys of mappings, along the path)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise PrefoptError(
            f'"{spec}" is not of the form "module:function".',
            where=where,
            fix='write the module and the function separated by a colon, e.g. "mypkg.rewards:score".',
        )
    module_name, _, path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise PrefoptError(
            f'module "{module_name}" cannot be imported ({err}).',
            where=where,
            fix="check the module name and that it is importable (on PYTHONPATH or installed).",
        ) from None
    walked = module_name
    for part in path.split("."):
        if not part:
            raise PrefoptError(f'"{spec}" has an empty name in its path.', where=where)
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif hasattr(obj, "__getitem__") and not isinstance(obj, str | bytes):
            try:
                obj = obj[part]
            except (KeyError, IndexError, TypeError):
                options = list(obj.keys()) if hasattr(obj, "keys") else []
                raise PrefoptError(
                    f'"{walked}" has no key or attribute "{part}".{did_you_mean(part, options)}',
                    where=where,
                ) from None
        else:
            options = [n for n in dir(obj) if not n.startswith("_")]
            raise PrefoptError(
                f'"{walked}" has no attribute "{part}".{did_you_mean(part, options)}', where=where
            )
        walked = f"{walked}.{part}" if walked != module_name else f"{module_name}:{part}"
    if not callable(obj):
        raise PrefoptError(
            f'"{spec}" is a {type(obj).__name__}, not a function.',
            where=where,
            fix="name a function (or any callable) that takes (prompt, reply) and returns a number.",
        )
    return obj


class CallableJudge(Judge):
    type = "callable"

    def __init__(
        self,
        fn: Callable,
        *,
        name: str,
        batched: bool = False,
        kwargs: dict[str, Any] | None = None,
        where: str = "judge",
        tie_margin: float = 0.0,
    ):
        super().__init__(name, where=where, tie_margin=tie_margin)
        self.fn = fn
        self.batched = batched
        self.kwargs = dict(kwargs or {})

    def _score(self, prompts: list, replies: list) -> list:
        if self.batched:
            return list(self.fn(prompts, replies, **self.kwargs))
        return [self.fn(p, r, **self.kwargs) for p, r in zip(prompts, replies)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "batched": self.batched}


@register_judge_type("callable", CallableSection)
def _build(cfg: CallableSection, *, where: str = "judge", base_dir=None) -> CallableJudge:
    fn = resolve_function(cfg.function, where=f"{where}.function")
    return CallableJudge(
        fn,
        name=cfg.name or f"callable:{cfg.function}",
        batched=cfg.batched,
        kwargs=cfg.kwargs,
        where=where,
        tie_margin=cfg.tie_margin,
    )
