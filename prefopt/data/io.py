"""Reading raw rows from local files, dataset directories and hub datasets.

Local files: ``.jsonl``/``.json`` (a JSON array or JSON lines; ``.gz`` compressed too) and
``.parquet``. A directory is either a ``save_to_disk`` dataset or a folder ``datasets`` can load.
Anything else that does not exist locally and looks like ``org/name`` is a hub dataset id, loaded
with ``datasets.load_dataset`` (from the local cache when offline).

JSON is parsed line by line here rather than by ``datasets`` so that one bad line becomes a counted
``malformed_row`` (with its line number) instead of an Arrow schema error for the whole file.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prefopt.core.errors import PrefoptError, did_you_mean

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FILE_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
BATCH = 1000


@dataclass
class Malformed:
    """Stands in for a raw row that could not even be parsed (bad JSON line)."""

    detail: str


@dataclass
class RawInput:
    """Where rows come from and an iterator over ``(index, row)``."""

    description: str
    rows: Iterator[tuple[int, Any]]
    columns: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in sorted(FILE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def resolve_local(path: str, base_dir: Path | None) -> Path | None:
    """The local path ``path`` refers to (relative paths against ``base_dir``), or None for a hub id.

    A path that does not exist raises, unless it looks like a hub id (``org/name``)."""
    p = Path(path).expanduser()
    candidate = p if p.is_absolute() else (base_dir or Path.cwd()) / p
    if candidate.exists():
        return candidate.resolve()
    looks_local = path.startswith((".", "/", "~")) or _suffix(p) in FILE_SUFFIXES
    if looks_local or not HUB_ID.match(path):
        raise PrefoptError(
            f'data file "{path}" does not exist (looked for {candidate}).',
            fix="check the path; relative paths are resolved against the recipe's folder (or the current "
            "directory on the command line). A hub dataset is given as org/name.",
        )
    return None


def open_input(
    path: str | None,
    *,
    base_dir: Path | None,
    split: str | None,
    default_split: str,
    where: str,
    config: str | None = None,
    revision: str | None = None,
    data_dir: str | None = None,
) -> RawInput:
    """Open a local file, a dataset directory or a hub dataset for row iteration."""
    if not path:
        raise PrefoptError(
            "no path given.",
            where=where,
            fix="set `path:` to a local file/directory or a hub dataset id (org/name).",
        )
    local = resolve_local(path, base_dir)
    if local is None:
        ds = load_hub(
            path,
            split=split or default_split,
            config=config,
            revision=revision,
            data_dir=data_dir,
            where=where,
        )
        return _from_dataset(ds, f"hub dataset {path} (split {split or default_split})")
    if local.is_dir():
        ds = _load_dir(local, split=split, default_split=default_split, where=where)
        return _from_dataset(ds, f"directory {local}" + (f" (split {split})" if split else ""))
    if split not in (None, "train"):
        raise PrefoptError(
            f'split "{split}" was given for the single file {local}; a file has no splits.',
            where=where,
            fix="drop `split:` (or point `path:` at the file holding that split).",
        )
    suffix = _suffix(local)
    if suffix == ".parquet":
        return _parquet_rows(local)
    if suffix in (".json", ".jsonl", ".json.gz", ".jsonl.gz"):
        return RawInput(f"file {local}", _json_rows(local))
    raise PrefoptError(
        f"cannot read {local}: unsupported file type {suffix!r}.",
        where=where,
        fix="use .jsonl, .json (array or JSON lines), .parquet, a dataset directory, or a hub dataset id.",
    )


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_text(path) as fh:
        head = ""
        while True:
            ch = fh.read(1)
            if not ch or not ch.isspace():
                head = ch
                break
        if head == "[":
            rest = fh.read()
            try:
                data = json.loads(head + rest)
            except json.JSONDecodeError as e:
                raise PrefoptError(
                    f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.",
                    fix="fix the file, or write it as JSON lines (one object per line) so a bad row only drops that row.",
                ) from None
            for i, row in enumerate(data):
                yield i, row
            return
    # JSON lines (a single object per line); a bad line is one malformed row
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        index = 0
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if index == 0:
                    _reject_single_object(path)
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                row = Malformed(f"line {lineno}: invalid JSON ({msg})")
            yield index, row
            index += 1


def _reject_single_object(path: Path) -> None:
    """A pretty-printed single JSON object is not a list of rows: say so instead of dropping every line."""
    try:
        with _open_text(path) as fh:
            whole = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return
    if isinstance(whole, dict):
        keys = ", ".join(list(whole)[:8])
        raise PrefoptError(
            f"{path} holds a single JSON object (keys: {keys}), not rows.",
            fix="write the rows as a JSON array or as JSON lines (one object per line).",
        )


def _parquet_rows(path: Path) -> RawInput:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several error types for a broken file
        raise PrefoptError(f"{path} is not a readable parquet file: {e}.") from None

    def rows() -> Iterator[tuple[int, Any]]:
        index = 0
        for batch in pf.iter_batches(batch_size=BATCH):
            for row in batch.to_pylist():
                yield index, row
                index += 1

    return RawInput(f"file {path}", rows(), columns=list(pf.schema_arrow.names))


def _from_dataset(ds: Any, description: str) -> RawInput:
    def rows() -> Iterator[tuple[int, Any]]:
        index = 0
        for batch in ds.iter(batch_size=BATCH):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                yield index, dict(zip(keys, values))
                index += 1

    return RawInput(description, rows(), columns=list(ds.column_names))


def _pick_split(dd: Any, split: str | None, default_split: str, where: str, what: str) -> Any:
    names = list(dd.keys())
    chosen = split or (default_split if default_split in names else (names[0] if len(names) == 1 else None))
    if chosen is None or chosen not in names:
        hint = did_you_mean(chosen, names) if chosen else ""
        raise PrefoptError(
            f"{what} has splits {names}; {'split ' + repr(chosen) + ' is not one of them.' if chosen else 'say which one.'}{hint}",
            where=where,
            fix="set `split:` to one of them.",
        )
    return dd[chosen]


def _load_dir(path: Path, *, split: str | None, default_split: str, where: str) -> Any:
    import datasets

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        obj = datasets.load_from_disk(str(path))
        if isinstance(obj, datasets.DatasetDict):
            return _pick_split(obj, split, default_split, where, f"the saved dataset {path}")
        return obj
    try:
        dd = datasets.load_dataset(str(path))
    except Exception as e:  # datasets raises many types for an unreadable folder
        raise PrefoptError(
            f"could not load the directory {path} with datasets: {type(e).__name__}: {e}",
            where=where,
            fix="point `path:` at a .jsonl/.json/.parquet file, a save_to_disk folder or a folder of data files.",
        ) from None
    return _pick_split(dd, split, default_split, where, f"the directory {path}")


def _offline() -> bool:
    return any(
        os.environ.get(v, "0").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def load_hub(
    name: str,
    *,
    split: str,
    config: str | None,
    revision: str | None,
    data_dir: str | None,
    where: str,
) -> Any:
    """``datasets.load_dataset`` with errors a person can act on."""
    import datasets

    kwargs: dict[str, Any] = {"split": split}
    if revision:
        kwargs["revision"] = revision
    if data_dir:
        kwargs["data_dir"] = data_dir
    try:
        return datasets.load_dataset(name, config, **kwargs)
    except Exception as e:  # datasets/huggingface_hub raise many types; all become one clear error
        text = f"{type(e).__name__}: {e}"
        if "Unknown split" in str(e) or "should be one of" in str(e).lower():
            raise PrefoptError(
                f'hub dataset {name} has no split "{split}" ({e}).',
                where=where,
                fix="set `split:` to one of the splits listed (for a held-out set without a test split use "
                "data.eval_fraction).",
            ) from None
        not_cached = (
            isinstance(e, (ConnectionError, OSError, FileNotFoundError))
            or _offline()
            or ("offline" in text.lower() or "couldn't reach" in text.lower())
        )
        if not_cached:
            raise PrefoptError(
                f'the hub dataset "{name}" (split {split}) is not in the local Hugging Face cache and cannot be '
                f"downloaded here ({text}).",
                where=where,
                fix=f"on a machine with network access run `huggingface-cli download --repo-type dataset {name}` "
                "(then copy the cache, ~/.cache/huggingface, here), or download the files and give a local path.",
            ) from None
        raise PrefoptError(
            f"could not load hub dataset {name} (split {split}): {text}", where=where
        ) from None
