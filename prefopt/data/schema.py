"""The canonical data schema every source produces and every trainer consumes.

Two *kinds*:

* **paired** — ``prompt, chosen, rejected, prompt_id, source, score_chosen, score_rejected``
  (DPO, IPO, ORPO, SimPO);
* **unpaired** — ``prompt, completion, label, prompt_id, source, score`` (KTO).

Two *formats*, uniform within a dataset (checked on the dataset's features, never guessed per row
the way TRL's ``is_conversational`` does):

* **conversational** — ``prompt`` is a list of ``{"role", "content"}`` messages (system/user/...
  turns, ending with the turn the reply answers) and ``chosen``/``rejected``/``completion`` are lists
  holding the assistant message(s) only (the prompt is never repeated inside them);
* **text** — every field is a plain string (the ground-truth world uses it: prompt ``"37+48="``,
  chosen ``"85"``).

Messages are stored with exactly the keys ``role`` and ``content``, in that order, whatever the
input's key order was. ``prompt_id`` is the SHA-256 of the prompt serialised as compact JSON (see
:func:`compute_prompt_id`), so the same prompt gets the same id in every source and every kind;
train/eval splits and pairing group by it.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import pyarrow as pa
from datasets import Dataset, Features, LargeList, List, Value

from prefopt.core.errors import PrefoptError

Kind = Literal["paired", "unpaired"]
Format = Literal["conversational", "text"]

KINDS: tuple[str, ...] = ("paired", "unpaired")
FORMATS: tuple[str, ...] = ("conversational", "text")
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool", "developer")

PAIRED: tuple[str, ...] = (
    "prompt",
    "chosen",
    "rejected",
    "prompt_id",
    "source",
    "score_chosen",
    "score_rejected",
)
UNPAIRED: tuple[str, ...] = ("prompt", "completion", "label", "prompt_id", "source", "score")
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "paired": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion"),
}
COLUMNS: dict[str, tuple[str, ...]] = {"paired": PAIRED, "unpaired": UNPAIRED}

MESSAGE_FEATURE = {"role": Value("string"), "content": Value("string")}


def messages_feature() -> List:
    return List(dict(MESSAGE_FEATURE))


def features(kind: str, fmt: str) -> Features:
    """The exact ``datasets.Features`` of a canonical dataset of this kind and format."""
    _check_kind_format(kind, fmt)
    text = Value("string")
    conv = fmt == "conversational"
    body = messages_feature if conv else (lambda: text)
    if kind == "paired":
        return Features(
            {
                "prompt": body(),
                "chosen": body(),
                "rejected": body(),
                "prompt_id": Value("string"),
                "source": Value("string"),
                "score_chosen": Value("float64"),
                "score_rejected": Value("float64"),
            }
        )
    return Features(
        {
            "prompt": body(),
            "completion": body(),
            "label": Value("bool"),
            "prompt_id": Value("string"),
            "source": Value("string"),
            "score": Value("float64"),
        }
    )


def _check_kind_format(kind: str, fmt: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def message(role: str, content: str) -> dict[str, str]:
    """A message with the canonical key order."""
    return {"role": role, "content": content}


def canonical_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Messages reduced to ``{"role", "content"}`` in that order (any input key order)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def compute_prompt_id(prompt: str | Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 (hex) of ``json.dumps(prompt, ensure_ascii=False, separators=(",", ":"))``.

    Conversational prompts are serialised as ``[{"role": ..., "content": ...}, ...]`` (that key
    order, other keys dropped); text prompts as a JSON string. Identical prompts from different
    sources therefore share one id.
    """
    value: Any = prompt if isinstance(prompt, str) else canonical_messages(prompt)
    return hashlib.sha256(_ENCODER.encode(value).encode("utf-8")).hexdigest()


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def to_float(value: Any) -> float | None:
    """A score as float, or None for missing / NaN."""
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


# ------------------------------------------------------------------------------------------ detection
def _is_messages_feature(feat: Any) -> bool:
    inner = None
    if isinstance(feat, (List, LargeList)):
        inner = feat.feature
    elif isinstance(feat, list) and len(feat) == 1:
        inner = feat[0]
    return isinstance(inner, dict) and "role" in inner and "content" in inner


def _is_string_feature(feat: Any) -> bool:
    return isinstance(feat, Value) and feat.dtype in ("string", "large_string")


def data_kind(ds: Dataset) -> str:
    """``"paired"`` (has chosen and rejected) or ``"unpaired"`` (has completion and label)."""
    cols = set(ds.column_names)
    if {"prompt", "chosen", "rejected"} <= cols:
        return "paired"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired"
    raise PrefoptError(
        f"the dataset has columns {sorted(cols)}, which are neither paired (prompt, chosen, rejected) "
        "nor unpaired (prompt, completion, label).",
        fix="load it through a prefopt source (see `prefopt data sources`), which converts it to canonical form.",
    )


def data_format(ds: Dataset) -> str:
    """``"conversational"`` or ``"text"``, decided from the features of every text field.

    A dataset that mixes the two (e.g. a string ``prompt`` with message-list ``chosen``, the
    UltraFeedback H4 shape) is rejected: that mix is what makes TRL's per-row guess flip.
    """
    kind = data_kind(ds)
    found: dict[str, str] = {}
    for col in TEXT_FIELDS[kind]:
        feat = ds.features[col]
        if _is_messages_feature(feat):
            found[col] = "conversational"
        elif _is_string_feature(feat):
            found[col] = "text"
        else:
            raise PrefoptError(
                f'column "{col}" has type {feat}, which is neither a string nor a list of '
                '{"role", "content"} messages.',
                fix="load the data through a prefopt source so it is converted to canonical form.",
            )
    kinds = set(found.values())
    if len(kinds) > 1:
        detail = ", ".join(f"{c}: {f}" for c, f in found.items())
        raise PrefoptError(
            f"the dataset mixes text and conversational columns ({detail}).",
            fix="convert it with the matching prefopt source (e.g. ultrafeedback_h4 for a string prompt with "
            "message-list chosen/rejected), which emits one format for every column.",
        )
    return kinds.pop()


# ------------------------------------------------------------------------------------------ building
class DatasetBuilder:
    """Accumulates canonical rows and turns them into an Arrow-backed ``Dataset`` in chunks."""

    def __init__(self, kind: str, fmt: str, chunk_size: int = 4096):
        self.kind = kind
        self.fmt = fmt
        self.features = features(kind, fmt)
        self._schema = self.features.arrow_schema
        self._chunk: list[dict[str, Any]] = []
        self._tables: list[pa.Table] = []
        self._chunk_size = chunk_size
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self._chunk.append(row)
        self.count += 1
        if len(self._chunk) >= self._chunk_size:
            self._flush()

    def _flush(self) -> None:
        if self._chunk:
            self._tables.append(pa.Table.from_pylist(self._chunk, schema=self._schema))
            self._chunk = []

    def finish(self) -> Dataset:
        self._flush()
        table = pa.concat_tables(self._tables) if self._tables else self._schema.empty_table()
        return dataset_from_table(table, self.features)


def dataset_from_table(table: pa.Table, feats: Features | None = None) -> Dataset:
    """Wrap an in-memory Arrow table as a ``Dataset`` (no copy)."""
    from datasets import DatasetInfo
    from datasets.table import InMemoryTable

    info = DatasetInfo(features=feats) if feats is not None else None
    if feats is not None and table.schema != feats.arrow_schema:
        table = table.cast(feats.arrow_schema)
    # a fresh random fingerprint: hashing the whole table (the default) costs more than building it
    return Dataset(InMemoryTable(table), info=info, fingerprint=uuid.uuid4().hex)


def finalize_row(row: dict[str, Any], kind: str, source: str) -> dict[str, Any]:
    """Fill ``prompt_id``/``source`` and normalise scores of one canonical row (in place)."""
    row["prompt_id"] = compute_prompt_id(row["prompt"])
    if not row.get("source"):
        row["source"] = source
    if kind == "paired":
        row["score_chosen"] = to_float(row.get("score_chosen"))
        row["score_rejected"] = to_float(row.get("score_rejected"))
    else:
        row["score"] = to_float(row.get("score"))
        row["label"] = bool(row["label"])
    return row


def build_dataset(rows: Iterable[dict[str, Any]], kind: str, fmt: str, source: str = "custom") -> Dataset:
    """Canonical ``Dataset`` from rows holding at least the text fields (and ``label`` if unpaired).

    ``prompt_id`` is computed, ``source`` defaults to ``source``, scores default to None and
    messages are reduced to ``{"role", "content"}``. Rows are not validated for content (empty
    replies etc.); sources do that and count what they drop.
    """
    builder = DatasetBuilder(kind, fmt)
    conv = fmt == "conversational"
    for row in rows:
        out = dict(row)
        if conv:
            for col in TEXT_FIELDS[kind]:
                out[col] = canonical_messages(out[col])
        builder.add(finalize_row(out, kind, source))
    return builder.finish()


def empty_dataset(kind: str, fmt: str) -> Dataset:
    return DatasetBuilder(kind, fmt).finish()
