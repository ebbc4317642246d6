"""Registry of data sources, addressed by name from a recipe's ``data:`` block.

A source is a function ``read(spec, *, base_dir, seed, report) -> datasets.Dataset`` that returns
canonical rows (see :mod:`prefopt.data.schema`) and counts what it dropped in ``report``. ``spec``
holds ``path``, ``split``, ``max_rows`` and the source's own options. Sources that declare their
options (every builtin one does) get them checked here: an unknown option is an error naming it
and listing the allowed ones, and defaults are filled in before the function runs.

The builtin sources live in :mod:`prefopt.data.sources` (one module each); the ground-truth world
registers ``world`` from :mod:`prefopt.world`. Both are imported lazily on first lookup.
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.core.errors import PrefoptError, did_you_mean

STANDARD_KEYS: tuple[str, ...] = ("path", "split", "max_rows")
"""Keys every source accepts (``source`` itself is ignored when present)."""


@dataclass(frozen=True)
class Option:
    """A source option: default, one-line help, and an optional type/choices check."""

    default: Any
    help: str
    type: str = "any"  # "bool" | "int" | "float" | "str" | "mapping" | "list" | "any"
    choices: tuple[Any, ...] | None = None

    def check(self, source: str, key: str, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        ok = {
            "bool": lambda v: isinstance(v, bool),
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "mapping": lambda v: isinstance(v, Mapping),
            "list": lambda v: isinstance(v, (list, tuple)),
            "any": lambda v: True,
        }[self.type](value)
        if not ok:
            raise PrefoptError(
                f'option "{key}" of source {source} = {value!r} should be of type {self.type}.',
                where=f"data source {source}",
                fix=f"{key}: {self.help}",
            )
        if self.choices is not None and value not in self.choices:
            raise PrefoptError(
                f'option "{key}" of source {source} = {value!r} is not one of {list(self.choices)}.'
                f"{did_you_mean(str(value), [str(c) for c in self.choices])}",
                where=f"data source {source}",
            )
        return value


SourceFn = Callable[..., Any]


@dataclass
class SourceInfo:
    name: str
    read: SourceFn
    description: str
    options: dict[str, Option] | None = None
    kinds: tuple[str, ...] = field(default_factory=tuple)


_SOURCES: dict[str, SourceInfo] = {}
_BUILTINS_LOADED = False


def register_source(
    name: str,
    *,
    options: dict[str, Option] | None = None,
    description: str | None = None,
    kinds: tuple[str, ...] = (),
) -> Callable[[SourceFn], SourceFn]:
    """Decorator registering ``read(spec, *, base_dir, seed, report)`` under ``name``."""

    def deco(fn: SourceFn) -> SourceFn:
        existing = _SOURCES.get(name)
        if existing is not None and _qualname(existing.read) != _qualname(fn):
            raise ValueError(f"data source {name!r} is already registered by {_qualname(existing.read)}")
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _SOURCES[name] = SourceInfo(name, fn, doc, options, kinds)
        return fn

    return deco


def _qualname(fn: SourceFn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        importlib.import_module("prefopt.data.sources")
        _BUILTINS_LOADED = True


def _load_world(required: bool) -> None:
    try:
        importlib.import_module("prefopt.world")
    except ModuleNotFoundError as e:
        if e.name != "prefopt.world" and required:
            raise
    except ImportError:
        if required:
            raise


def source_names() -> list[str]:
    """Every registered source name, sorted."""
    _load_builtins()
    _load_world(required=False)
    return sorted(_SOURCES)


def source_info(name: str) -> SourceInfo:
    _load_builtins()
    if name not in _SOURCES:
        _load_world(required=name == "world")
    info = _SOURCES.get(name)
    if info is None:
        names = source_names()
        raise PrefoptError(
            f'unknown data source "{name}".{did_you_mean(name, names)} Available: {", ".join(names)}.',
            where="data.train[].source",
            fix="pick one of the names above (`prefopt data sources` describes each), or use jsonl/json/parquet "
            "with a `columns:` mapping for your own files.",
        )
    return info


def get_source(name: str) -> SourceFn:
    """The reader registered under ``name`` (options checked and defaulted when it declares them)."""
    info = source_info(name)
    if info.options is None:
        return info.read

    @functools.wraps(info.read)
    def read(spec: Mapping[str, Any], *, base_dir: Path | None = None, seed: int = 0, report: Any) -> Any:
        return info.read(
            resolve_options(name, spec, info.options), base_dir=base_dir, seed=seed, report=report
        )

    return read


def resolve_options(name: str, spec: Mapping[str, Any], options: Mapping[str, Option]) -> dict[str, Any]:
    """``spec`` with unknown keys rejected, types checked and defaults filled in."""
    allowed = list(STANDARD_KEYS) + list(options)
    out: dict[str, Any] = {k: spec.get(k) for k in STANDARD_KEYS}
    for key in spec:
        if key in STANDARD_KEYS or key == "source":
            continue
        if key not in options:
            raise PrefoptError(
                f'unknown option "{key}" for data source {name}.{did_you_mean(key, allowed)} '
                f"{name} takes: {', '.join(allowed)}.",
                where=f"data source {name}",
                fix="remove or rename the key (`prefopt data sources` lists every option with its meaning).",
            )
    for key, opt in options.items():
        out[key] = opt.check(name, key, spec[key]) if key in spec else copy.deepcopy(opt.default)
    max_rows = out.get("max_rows")
    if max_rows is not None and (
        not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows <= 0
    ):
        raise PrefoptError(
            f"max_rows = {max_rows!r} must be a positive integer.", where=f"data source {name}"
        )
    return out
