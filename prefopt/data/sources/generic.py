"""Your own files: ``jsonl``, ``json`` and ``parquet`` with an explicit column mapping.

``columns:`` maps canonical fields onto your column names, e.g. ``{prompt: question, chosen: good,
rejected: bad}`` (paired) or ``{prompt: input, completion: output, label: thumbs_up}`` (unpaired);
optional ``score_chosen``/``score_rejected``/``score`` and ``source`` columns are kept as metadata
(``source`` verbatim; rows without one get the reader's name).
Without ``columns:`` the canonical names are used when present (``prompt``/``chosen``/``rejected``
or ``prompt``/``completion``/``label``), so prefopt's own output reads back as-is.

Values may be strings or message lists (``role``/``content`` or ``from``/``value``, typed content
parts such as LLaMA-Factory v1's ``[{"type": "text", "value": ...}]`` are joined). ``format: auto``
picks conversational when any text field of any row holds messages, else text — decided once for the
whole file, never per row. In a conversational dataset a string prompt becomes a user message and a
string reply an assistant message. When ``chosen``/``rejected`` hold whole conversations (implicit
prompt, e.g. ``{chosen: chosen_messages, rejected: rejected_messages}``) the prompt is their shared
message prefix; an unpaired ``completion`` holding a whole conversation without a prompt column is
split at its trailing assistant turns. Text data needs a prompt column (a character-level split is
what TRL gets wrong; use ``hh_rlhf`` for Human:/Assistant: transcripts).

The three names differ only in intent: each reads .jsonl/.json (array or lines, optionally .gz),
.parquet, .csv, folders of such files, dataset directories and hub ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefopt.core.errors import PrefoptError, did_you_mean
from prefopt.data.io import Malformed, RawInput, open_input, refuse_unparsed
from prefopt.data.messages import (
    RowProblem,
    as_label,
    as_score,
    is_message_list,
    normalize_messages,
    require_assistant,
    require_text,
    split_implicit_prompt,
    split_last_reply,
    strip_repeated_prompt,
)
from prefopt.data.registry import Option, register_source
from prefopt.data.report import DropReport
from prefopt.data.sources._base import KEEP_TIES, RowContext, emit, options
from prefopt.data.sources.sharegpt_ranking import check_roles

FIELDS = (
    "prompt",
    "chosen",
    "rejected",
    "completion",
    "label",
    "score_chosen",
    "score_rejected",
    "score",
    "source",
)
PAIRED_NEEDS = ("chosen", "rejected")
UNPAIRED_NEEDS = ("completion", "label")


def _kind_of(columns: Mapping[str, str], where: str) -> str:
    has = set(columns)
    if set(PAIRED_NEEDS) <= has:
        if has & {"completion", "label", "score"}:
            raise PrefoptError(
                f"columns maps both paired fields (chosen/rejected) and unpaired ones ({sorted(has & {'completion', 'label', 'score'})}).",
                where=where,
                fix="map either {prompt, chosen, rejected[, score_chosen, score_rejected]} or {prompt, completion, label[, score]}.",
            )
        return "paired"
    if set(UNPAIRED_NEEDS) <= has:
        return "unpaired"
    raise PrefoptError(
        f"columns {dict(columns)} name neither chosen+rejected (paired) nor completion+label (unpaired).",
        where=where,
        fix="e.g. columns: {prompt: question, chosen: good, rejected: bad} or {prompt: input, completion: output, label: ok}.",
    )


def resolve_columns(given: Mapping[str, Any] | None, available: list[str], where: str) -> dict[str, str]:
    """The field → column mapping, checked against the columns the data has."""
    if given:
        out: dict[str, str] = {}
        for field, col in given.items():
            if field not in FIELDS:
                raise PrefoptError(
                    f'columns: unknown field "{field}".{did_you_mean(field, FIELDS)} Fields: {", ".join(FIELDS)}.',
                    where=where,
                    fix="write columns as {<canonical field>: <your column>}.",
                )
            if not isinstance(col, str):
                raise PrefoptError(f"columns.{field} = {col!r} must be a column name.", where=where)
            if available and col not in available:
                raise PrefoptError(
                    f'columns.{field} = "{col}", but the data has no column "{col}".{did_you_mean(col, available)} '
                    f"Columns: {', '.join(available)}.",
                    where=where,
                )
            out[field] = col
        return out
    avail = set(available)
    if {"chosen", "rejected"} <= avail:
        names = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected", "source")
    elif {"completion", "label"} <= avail:
        names = ("prompt", "completion", "label", "score", "source")
    else:
        raise PrefoptError(
            f"no `columns:` mapping was given and the data's columns ({', '.join(available) or 'none'}) are not "
            "the canonical ones.",
            where=where,
            fix="add columns: {prompt: <col>, chosen: <col>, rejected: <col>} (paired) or {prompt: <col>, "
            "completion: <col>, label: <col>} (unpaired).",
        )
    return {n: n for n in names if n in avail}


def detect_format(rows: list[tuple[int, Any]], columns: dict[str, str], kind: str) -> str:
    """conversational if any text field of any row holds messages, else text."""
    fields = [columns[f] for f in ("prompt", "chosen", "rejected", "completion") if f in columns]
    for _, row in rows:
        if isinstance(row, Mapping) and any(is_message_list(row.get(col)) for col in fields):
            return "conversational"
    return "text"


def _as_messages(value: Any, role: str, where: str, roles: dict[str, str]) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return normalize_messages(value, where, roles)


def make_convert(columns: dict[str, str], kind: str, fmt: str, roles: dict[str, str]):
    col = columns.get
    conv = fmt == "conversational"

    def meta(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in ("score_chosen", "score_rejected", "score"):
            if f in columns:
                out[f] = as_score(row.get(columns[f]), columns[f])
        if "source" in columns and row.get(columns["source"]) not in (None, ""):
            out["source"] = str(row[columns["source"]])
        return out

    def prompt_of(row: dict[str, Any]) -> Any:
        if "prompt" not in columns:
            return None
        value = row[columns["prompt"]]
        return (
            _as_messages(value, "user", columns["prompt"], roles)
            if conv
            else require_text(value, columns["prompt"])
        )

    def paired(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
        if not conv:
            return [
                {
                    "prompt": prompt_of(row),
                    "chosen": require_text(row[col("chosen")], col("chosen")),
                    "rejected": require_text(row[col("rejected")], col("rejected")),
                    **meta(row),
                }
            ]
        c = _as_messages(row[col("chosen")], "assistant", col("chosen"), roles)
        r = _as_messages(row[col("rejected")], "assistant", col("rejected"), roles)
        prompt = prompt_of(row)
        if any(m["role"] != "assistant" for m in c + r):  # whole conversations: implicit prompt
            shared, c, r = split_implicit_prompt(c, r)
            prompt = shared or prompt
        if prompt is None:
            raise RowProblem("empty_prompt", "no prompt column and the replies carry no prompt turns")
        return [{"prompt": prompt, "chosen": c, "rejected": r, **meta(row)}]

    def unpaired(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
        label = as_label(row[col("label")], col("label"))
        if not conv:
            return [
                {
                    "prompt": prompt_of(row),
                    "completion": require_text(row[col("completion")], col("completion")),
                    "label": label,
                    **meta(row),
                }
            ]
        completion = _as_messages(row[col("completion")], "assistant", col("completion"), roles)
        prompt = prompt_of(row)
        if prompt is None:
            prompt, completion = split_last_reply(completion, col("completion"))
        else:
            completion, stripped = strip_repeated_prompt(prompt, completion)
            if stripped:
                ctx.flag("completion_repeats_prompt")
        require_assistant(completion, col("completion"))
        return [{"prompt": prompt, "completion": completion, "label": label, **meta(row)}]

    return paired if kind == "paired" else unpaired


def make_reader(name: str):
    def read(spec: dict[str, Any], *, base_dir: Path | None = None, seed: int = 0, report: DropReport):
        where = f"data source {name}"
        raw = open_input(
            spec.get("path"),
            base_dir=base_dir,
            split=spec.get("split"),
            default_split="train",
            where=where,
            config=spec.get("config"),
            revision=spec.get("revision"),
            data_dir=spec.get("data_dir"),
        )
        rows = list(raw.rows)
        if not rows:
            raise PrefoptError(
                f"{raw.description} holds no rows (an empty dataset).",
                where=where,
                fix="check that the file was written completely and that `path:` points at the right file.",
            )
        bad = [row for _, row in rows if isinstance(row, Malformed)]
        refuse_unparsed(bad, len(bad), len(rows), raw.description, where)
        available = raw.columns or _keys(rows)
        columns = resolve_columns(spec["columns"], available, where)
        kind = _kind_of(columns, where)
        fmt = spec["format"] if spec["format"] != "auto" else detect_format(rows, columns, kind)
        if fmt == "text" and "prompt" not in columns:
            raise PrefoptError(
                "text data needs a prompt column (splitting two strings at their common characters cuts words; "
                "that is TRL's extract_prompt bug).",
                where=where,
                fix="map columns.prompt, store messages instead of strings, or use the hh_rlhf source for "
                "Human:/Assistant: transcripts.",
            )
        roles = check_roles(name, spec["roles"])
        convert = make_convert(columns, kind, fmt, roles)
        return emit(
            RawInput(raw.description, iter(rows)),
            convert,
            name=name,
            kind=kind,
            fmt=fmt,
            report=report,
            max_rows=spec.get("max_rows"),
            keep_ties=spec["keep_ties"],
        )

    read.__doc__ = f"{name}: your own file with a columns: mapping (paired or unpaired, text or messages)."
    return read


def _keys(rows: list[tuple[int, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for _, row in rows:
        if isinstance(row, Mapping):
            for k in row:
                seen.setdefault(k, None)
    return list(seen)


GENERIC_OPTIONS = options(
    columns=Option(
        None,
        "map canonical fields onto your columns, e.g. {prompt: question, chosen: good, rejected: bad}",
        "mapping",
    ),
    format=Option(
        "auto",
        "auto (messages if any row has them), conversational or text",
        "str",
        ("auto", "conversational", "text"),
    ),
    keep_ties=KEEP_TIES,
    roles=Option(
        None, "extra role names mapped onto user/assistant/system/tool, e.g. {bot: assistant}", "mapping"
    ),
)

for _name in ("jsonl", "json", "parquet"):
    register_source(_name, options=GENERIC_OPTIONS, kinds=("paired", "unpaired"))(make_reader(_name))


def detect(sample):
    """Claim prefopt's canonical columns (its own output, TRL's explicit form) and LLaMA-Factory v1's
    chosen_messages/rejected_messages; the reader is named after the file type (json, jsonl, parquet)."""
    name = sample.generic_source
    ours = sample.has("prompt_id", "source")
    if sample.has("chosen_messages", "rejected_messages") and sample.conversations("chosen_messages"):
        return (
            90,
            "chosen_messages/rejected_messages conversations (LLaMA-Factory v1 DPO)",
            {"columns": {"chosen": "chosen_messages", "rejected": "rejected_messages"}},
            name,
        )
    if sample.has("prompt", "chosen", "rejected"):
        if ours:
            return 95, "prefopt's canonical paired columns (prompt_id, source)", None, name
        if sample.conversations("chosen"):  # replies repeating the prompt: a published build's shape
            return 75, "prompt + conversation chosen/rejected columns", None, name
        return 85, "canonical prompt/chosen/rejected columns", None, name
    if sample.has("prompt", "completion", "label"):
        if ours:
            return 95, "prefopt's canonical unpaired columns (prompt_id, source)", None, name
        if sample.messages("prompt"):
            return 70, "canonical prompt/completion/label columns", None, name
        return 85, "canonical prompt/completion/label columns", None, name
    if (
        sample.has("chosen", "rejected")
        and sample.conversations("chosen")
        and sample.conversations("rejected")
    ):
        return 75, "conversation chosen/rejected (implicit prompt)", None, name
    return None
