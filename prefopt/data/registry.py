"""Registry of data sources, addressed by name from a recipe's ``data:`` block.

A source is a function ``read(spec, *, base_dir, seed, report) -> datasets.Dataset`` that returns
canonical rows (see :mod:`prefopt.data.schema`) and counts what it dropped in ``report``. ``spec``
holds ``path``, ``split``, ``max_rows`` and the source's own options. Sources that declare their
options (every builtin one does) get them checked here: an unknown option is an error naming it
and listing the allowed ones, and defaults are filled in before the function runs.

A source module may also define ``detect(sample)`` (see :class:`Sample`): how sure it is that a file is
in its format and why; :func:`choose_source` picks the reader for ``prefopt data inspect | convert``
without ``--source`` from those claims, or lists the candidates when none is sure.

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
from prefopt.data.io import Malformed, open_input

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


# ------------------------------------------------------------------------------------------- detection
# A source module may define ``detect(sample) -> (score, reason[, options[, name]]) | None``: how sure
# it is (0–100) that ``sample`` (the first rows of a file) is in its format, why (one phrase a person can
# check), the source options that reading it needs (e.g. a ``columns:`` mapping) and, for a module that
# registers several names, which one. ``prefopt data inspect`` / ``convert`` without ``--source`` use it.
SAMPLE_ROWS = 20
SURE = 80
"""A source is chosen when it scores at least this ..."""
MARGIN = 15
"""... and this much more than the next candidate; otherwise the user is asked to name it."""
CANDIDATE = 40
"""Scores from here on are listed as candidates when the choice is not clear."""


class Sample:
    """The first rows of a dataset as detectors see them: column names and value checks.

    Every check looks at the sampled rows that have the column (and a non-null value there) and holds
    when at least 80% of them pass and there is at least one."""

    def __init__(self, rows: list[Mapping[str, Any]], *, path: str, columns: list[str] | None = None):
        self.rows = rows
        self.path = path
        seen: dict[str, None] = dict.fromkeys(columns or [])
        for row in rows:
            seen.update(dict.fromkeys(row))
        self.columns = list(seen)
        name = path.lower()
        self.suffix = next(
            (s for s in (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet") if name.endswith(s)), ""
        )

    @property
    def generic_source(self) -> str:
        """The generic reader named after the file type: json, parquet or jsonl."""
        return {".json": "json", ".json.gz": "json", ".parquet": "parquet"}.get(self.suffix, "jsonl")

    def has(self, *cols: str) -> bool:
        return all(c in self.columns for c in cols)

    def any_of(self, *cols: str) -> str | None:
        """The first of ``cols`` the data has."""
        return next((c for c in cols if c in self.columns), None)

    def share(self, col: str, pred: Callable[[Any], bool]) -> bool:
        values = [row[col] for row in self.rows if row.get(col) is not None]
        if not values:
            return False
        ok = 0
        for v in values:
            try:
                ok += bool(pred(v))
            except Exception:  # a detector's check must never crash on odd data
                pass
        return ok >= 0.8 * len(values)

    def strings(self, col: str) -> bool:
        return self.share(col, lambda v: isinstance(v, str))

    def messages(self, col: str) -> bool:
        """Message lists (``role``/``content`` or ``from``/``value``), or a single message object."""
        return self.share(col, _is_messages)

    def single_message(self, col: str) -> bool:
        return self.share(col, lambda v: isinstance(v, Mapping) and _is_message(v))

    def conversations(self, col: str) -> bool:
        """Message lists holding a user turn (a whole conversation, prompt included)."""
        return self.share(
            col,
            lambda v: (
                isinstance(v, list)
                and any(isinstance(m, Mapping) and _role(m) in ("user", "human") for m in v)
            ),
        )

    def booleans(self, col: str) -> bool:
        return self.share(
            col, lambda v: isinstance(v, bool) or v in (0, 1) or str(v).lower() in ("true", "false")
        )


def _is_message(m: Any) -> bool:
    return isinstance(m, Mapping) and (("role" in m and "content" in m) or ("from" in m and "value" in m))


def _is_messages(v: Any) -> bool:
    if isinstance(v, Mapping):
        return _is_message(v)
    return isinstance(v, list) and bool(v) and all(_is_message(m) for m in v)


def _role(m: Mapping[str, Any]) -> str:
    return str(m.get("role", m.get("from", ""))).lower()


@dataclass
class Detection:
    """One source's claim on a dataset."""

    source: str
    score: int
    reason: str
    options: dict[str, Any] = field(default_factory=dict)


def detect_candidates(sample: Sample) -> list[Detection]:
    """Every registered source's claim on ``sample``, best first (sources without a detector abstain)."""
    _load_builtins()
    out: list[Detection] = []
    done: set[str] = set()
    for info in _SOURCES.values():
        module_name = info.read.__module__
        if module_name in done:
            continue
        done.add(module_name)
        detect = getattr(importlib.import_module(module_name), "detect", None)
        if detect is None:
            continue
        claim = detect(sample)
        if not claim:
            continue
        score, reason, *rest = claim
        options = dict(rest[0]) if rest and rest[0] else {}
        name = rest[1] if len(rest) > 1 and rest[1] else info.name
        out.append(Detection(name, int(score), str(reason), options))
    out.sort(key=lambda d: -d.score)
    return out


def read_sample(path: str, *, base_dir: Path | None, split: str | None, where: str) -> Sample:
    """The first :data:`SAMPLE_ROWS` rows of a file, directory or hub dataset (unparseable rows skipped)."""
    raw = open_input(path, base_dir=base_dir, split=split, default_split="train", where=where)
    rows: list[Mapping[str, Any]] = []
    try:
        for _, row in raw.rows:
            if isinstance(row, Malformed) or not isinstance(row, Mapping):
                continue
            rows.append(row)
            if len(rows) >= SAMPLE_ROWS:
                break
    finally:
        close = getattr(raw.rows, "close", None)
        if close is not None:
            close()
    return Sample(rows, path=path, columns=raw.columns)


def choose_source(
    sample: Sample, *, where: str, command: Callable[[Detection], str] | None = None
) -> Detection:
    """The source that reads ``sample``, or a :class:`PrefoptError` listing the candidates.

    ``command(detection)`` renders the command line the user can run with that source named."""
    line = command or (lambda d: f"--source {d.source}{format_options(d.options)}")
    found = detect_candidates(sample)
    cols = ", ".join(sample.columns) or "none"
    if found and found[0].score >= SURE and (len(found) == 1 or found[0].score - found[1].score >= MARGIN):
        return found[0]
    candidates = [d for d in found if d.score >= CANDIDATE]
    if candidates:
        listed = "; ".join(f"{d.source} ({d.reason})" for d in candidates)
        runs = " or ".join(f"`{line(d)}`" for d in candidates)
        raise PrefoptError(
            f"cannot tell for sure which published format {sample.path} is in (columns: {cols}); it could be "
            f"read by {listed}.",
            where=where,
            fix=f"name the source: {runs} (`prefopt data sources NAME` describes each).",
        )
    generic = Detection(
        sample.generic_source, 0, "", {"columns": {"prompt": "<col>", "chosen": "<col>", "rejected": "<col>"}}
    )
    raise PrefoptError(
        f"{sample.path} is in none of the published formats prefopt knows (columns: {cols}"
        f"{'' if sample.rows else '; no readable rows'}).",
        where=where,
        fix=f"map your columns onto prefopt's: `{line(generic)}` (paired), or columns={{prompt: <col>, "
        "completion: <col>, label: <col>} (unpaired); `prefopt data sources` lists the named formats.",
    )


def format_options(options: Mapping[str, Any]) -> str:
    """``{"columns": {...}}`` → `` -o 'columns={a: b}'`` (values as YAML flow, as --option reads them)."""
    import yaml

    parts = []
    for key, value in options.items():
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        parts.append(f" -o '{key}={text}'")
    return "".join(parts)
