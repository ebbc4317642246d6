"""Reading raw rows from local files, dataset directories and hub datasets.

Local files: ``.jsonl``/``.json`` (a JSON array or JSON lines; ``.gz`` compressed too), ``.parquet``
and ``.csv``. A directory is either a ``save_to_disk`` dataset or a folder of such files: every data
file of the chosen split is read (split names come from the file names, as ``datasets`` infers them),
and a folder holding a file prefopt cannot read is refused with that file named — a file is never
skipped silently. Anything else that does not exist locally and looks like ``org/name`` is a hub
dataset id, loaded with ``datasets.load_dataset`` (from the local cache when offline).

JSON lines are parsed line by line here rather than by ``datasets`` so that one bad line — invalid
JSON or bytes that are not UTF-8, wherever it is in the file — becomes a counted ``malformed_row``
naming the file and line, instead of an Arrow schema error for the whole file. Damage that loses an
unknown number of rows (a cut-short gzip, a ``.gz`` name on an uncompressed file, an unreadable
parquet row group, a JSON array that is not valid JSON or not UTF-8) is refused with the file and the
line or row group, since no count of the lost rows could be given.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prefopt.core.errors import PrefoptError, did_you_mean

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
FILE_SUFFIXES = (*JSON_SUFFIXES, ".parquet", ".csv")
NOT_DATA = ("readme", "license", "licence", "changelog", "citation", ".gitattributes", ".gitignore")
"""Files in a data folder that are documentation, not data (matched on the lower-cased name's start)."""
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
        return _open_dir(local, split=split, default_split=default_split, where=where)
    if split not in (None, "train"):
        raise PrefoptError(
            f'split "{split}" was given for the single file {local}; a file has no splits.',
            where=where,
            fix="drop `split:` (or point `path:` at the file holding that split).",
        )
    if _suffix(local) not in FILE_SUFFIXES:
        raise PrefoptError(
            f"cannot read {local}: unsupported file type {_suffix(local)!r}.",
            where=where,
            fix="use .jsonl, .json (array or JSON lines), .parquet, .csv, a dataset directory, or a hub "
            "dataset id.",
        )
    return RawInput(f"file {local}", _indexed(file_rows(local)), columns=_file_columns(local))


def file_rows(path: Path, label: str | None = None) -> Iterator[Any]:
    """The raw rows of one supported local file (no index). A malformed row's detail ends with
    ``in <label>`` (default: the file's name; its path inside the folder when a folder is read)."""
    suffix = _suffix(path)
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix == ".csv":
        return _csv_rows(path, label)
    return _json_values(path, label)


def _file_columns(path: Path) -> list[str] | None:
    if _suffix(path) != ".parquet":
        return None
    return list(_parquet_file(path).schema_arrow.names)


def _indexed(rows: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    yield from enumerate(rows)


READ_ERRORS = (OSError, EOFError, zlib.error)


def _gzip_problem(path: Path, e: Exception, lineno: int) -> PrefoptError:
    """The error for a file that fails while it is read (``lineno`` lines were read before)."""
    if isinstance(e, gzip.BadGzipFile):
        return PrefoptError(
            f"{path} is named .gz but is not gzip-compressed ({e}).",
            fix=f"rename it without .gz (e.g. {path.name[:-3]}) or compress it with gzip.",
        )
    if not isinstance(e, (EOFError, zlib.error)):
        return PrefoptError(
            f"{path} cannot be read after line {lineno} ({type(e).__name__}: {e}).",
            fix="check the file's permissions and the disk it is on.",
        )
    return PrefoptError(
        f"{path} is cut short: the gzip stream ends before its end marker, after line {lineno} "
        f"({type(e).__name__}: {e}). The rows after that point are lost, so it is not read at all.",
        fix="re-download or re-compress the file (check it with `gzip -t`).",
    )


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _first_byte(path: Path) -> bytes:
    """The first non-whitespace byte (after a UTF-8 BOM), read in binary so no decoding can fail."""
    with _open_binary(path) as fh:
        try:
            chunk = fh.read(4096)
            chunk = chunk.removeprefix(b"\xef\xbb\xbf")
            while chunk:
                stripped = chunk.lstrip()
                if stripped:
                    return stripped[:1]
                chunk = fh.read(4096)
        except READ_ERRORS as e:
            raise _gzip_problem(path, e, 0) from None
    return b""


def _decode(path: Path, data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise PrefoptError(
            f"{path}: byte 0x{data[e.start]:02x} at line {line}, column {col} is not UTF-8 ({what}).",
            fix="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
        ) from None


def _json_values(path: Path, label: str | None = None) -> Iterator[Any]:
    """Rows of a JSON array file or a JSON lines file (a bad line is one :class:`Malformed` row)."""
    if _first_byte(path) == b"[":
        with _open_binary(path) as fh:
            try:
                raw = fh.read()
            except READ_ERRORS as e:
                raise _gzip_problem(path, e, 0) from None
        text = _decode(path, raw, "a JSON array is read as a whole")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PrefoptError(
                f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.",
                fix="fix the file, or write it as JSON lines (one object per line) so a bad row only drops that row.",
            ) from None
        yield from data if isinstance(data, list) else [data]
        return
    # JSON lines (a single object per line); a bad line is one malformed row
    where = f" in {label or path.name}"
    with _open_binary(path) as fh:
        index = 0
        lineno = 0
        lines = iter(fh)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                break
            except READ_ERRORS as e:
                raise _gzip_problem(path, e, lineno) from None
            lineno += 1
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if index == 0:
                    _reject_single_object(path)
                if isinstance(e, json.JSONDecodeError):
                    row = Malformed(f"line {lineno}: invalid JSON ({e.msg}){where}")
                else:
                    row = Malformed(f"line {lineno}: not UTF-8 (byte 0x{line[e.start]:02x}){where}")
            yield row
            index += 1


def refuse_unparsed(
    examples: list[Malformed], n_malformed: int, n_rows: int, description: str, where: str
) -> None:
    """Every raw row failed to parse: say so (with the first lines' problems) instead of letting a later
    step blame the missing columns or report an empty dataset."""
    if not n_rows or n_malformed < n_rows:
        return
    shown = "; ".join(m.detail for m in examples[:3])
    raise PrefoptError(
        f"none of the {n_rows:,} rows of {description} could be parsed ({shown}"
        + ("; ..." if n_rows > 3 else "")
        + ").",
        where=where,
        fix="check that the file is what its name says: JSON lines hold one JSON object per line, a .json file "
        "may also hold one JSON array of objects.",
    )


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    return _indexed(_json_values(path))


def _reject_single_object(path: Path) -> None:
    """A pretty-printed single JSON object is not a list of rows: say so instead of dropping every line."""
    try:
        with _open_binary(path) as fh:
            whole = json.loads(fh.read())
    except (json.JSONDecodeError, UnicodeDecodeError, *READ_ERRORS):
        return
    if isinstance(whole, dict):
        keys = ", ".join(list(whole)[:8])
        raise PrefoptError(
            f"{path} holds a single JSON object (keys: {keys}), not rows.",
            fix="write the rows as a JSON array or as JSON lines (one object per line).",
        )


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several error types for a broken file
        raise PrefoptError(
            f"{path} is not a readable parquet file: {e}.",
            fix="re-write or re-download the file (it may be truncated or not parquet at all).",
        ) from None


def _parquet_rows(path: Path) -> Iterator[Any]:
    """Rows of a parquet file, one row group at a time; a damaged row group is refused by number."""
    pf = _parquet_file(path)
    first = 0
    for group in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        try:
            table = pf.read_row_group(group)
            batch = table.to_pylist()
        except Exception as e:  # pyarrow: OSError, ArrowInvalid, ... for a damaged page
            raise PrefoptError(
                f"{path}: row group {group} of {pf.metadata.num_row_groups} (rows {first}–{first + n - 1}) "
                f"cannot be read ({type(e).__name__}: {e}). Its rows would be lost, so the file is not read.",
                fix='re-write or re-download the file; `python -c "import pyarrow.parquet as pq; '
                f"pq.read_table('{path}')\"` shows the same error.",
            ) from None
        yield from batch
        first += n


def _csv_rows(path: Path, label: str | None = None) -> Iterator[Any]:
    """Rows of a CSV file with a header line (values are strings); a row with the wrong number of
    fields is one :class:`Malformed` row."""
    import csv

    where = f" in {label or path.name}"
    with open(path, "rb") as fh:
        text = _decode(path, fh.read(), "CSV is read as text")
    reader = csv.reader(text.splitlines(keepends=True))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        raise PrefoptError(f"{path}: the CSV header cannot be parsed ({e}).") from None
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Malformed(f"line {reader.line_num}: {e}{where}")
            continue
        if not values:
            continue
        if len(values) != len(header):
            yield Malformed(
                f"line {reader.line_num}: {len(values)} fields, the header has {len(header)}{where}"
            )
            continue
        yield dict(zip(header, values))


# ------------------------------------------------------------------------------------------ folders
def _not_data(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1].lower()
    return name.startswith(NOT_DATA) or name.endswith(".md")


def _folder_files(path: Path) -> list[str]:
    """Every regular file under ``path`` (relative, posix), hidden files and folders excluded."""
    out = []
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or not f.is_file():
            continue
        out.append(rel)
    return out


def _folder_splits(path: Path) -> dict[str, list[str]]:
    """split name → files (relative), with the split names ``datasets`` infers from file names."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(path))
        found = DataFilesDict.from_patterns(patterns, base_path=str(path))
    except Exception:  # noqa: BLE001 - no pattern matched: every file is the train split
        return {"train": [f for f in _folder_files(path) if not _not_data(f)]}
    root = path.resolve()
    splits: dict[str, list[str]] = {}
    for name, files in found.items():
        rels = (Path(str(f)).resolve().relative_to(root).as_posix() for f in files)
        splits[str(name)] = sorted(rel for rel in rels if not _not_data(rel))
    return splits


def _open_dir(path: Path, *, split: str | None, default_split: str, where: str) -> RawInput:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        ds = _load_dir(path, split=split, default_split=default_split, where=where)
        return _from_dataset(ds, f"directory {path}" + (f" (split {split})" if split else ""))
    splits = _folder_splits(path)
    in_splits = {f for files in splits.values() for f in files}
    ignored = [f for f in _folder_files(path) if f not in in_splits and not _not_data(f)]
    unsupported = sorted(f for f in in_splits if _suffix(Path(f)) not in FILE_SUFFIXES)
    if unsupported or ignored:
        listed = unsupported + ignored
        why = []
        if unsupported:
            why.append(f"not a file type prefopt reads: {', '.join(unsupported)}")
        if ignored:
            why.append(f"in no split ({', '.join(sorted(splits))}): {', '.join(ignored)}")
        raise PrefoptError(
            f"the folder {path} holds {len(listed)} file(s) that would be ignored — " + "; ".join(why) + ".",
            where=where,
            fix="move them out of the folder (or convert them to .jsonl/.json/.parquet/.csv); a split is read "
            "from every file whose name holds the split (train*, test*, ...), otherwise every file is train.",
        )
    if not splits or not in_splits:
        raise PrefoptError(
            f"the folder {path} holds no data files (.jsonl, .json, .parquet, .csv, optionally .gz).",
            where=where,
            fix="point `path:` at the data file or at a folder that holds them.",
        )
    files = _pick_split(splits, split, default_split, where, f"the directory {path}")
    if not files:
        raise PrefoptError(f'split "{split}" of the folder {path} has no files.', where=where)

    def rows() -> Iterator[tuple[int, Any]]:
        index = 0
        for rel in files:
            for row in file_rows(path / rel, label=rel):
                yield index, row
                index += 1

    chosen = split or next(k for k, v in splits.items() if v is files)
    return RawInput(f"directory {path} (split {chosen}: {len(files)} file(s): {', '.join(files)})", rows())


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
    """A ``save_to_disk`` dataset (a ``Dataset`` or one split of a ``DatasetDict``)."""
    import datasets

    try:
        obj = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets/pyarrow raise many types for a damaged saved dataset
        raise PrefoptError(
            f"the saved dataset {path} cannot be read ({type(e).__name__}: {e}).",
            where=where,
            fix="save it again with Dataset.save_to_disk, or point `path:` at the source files.",
        ) from None
    if isinstance(obj, datasets.DatasetDict):
        return _pick_split(obj, split, default_split, where, f"the saved dataset {path}")
    return obj


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
