"""The machinery every builtin source shares: options common to all, the row driver, row checks.

A source module supplies a ``convert(raw_row, ctx) -> list[canonical rows]`` function; the driver
(:func:`read_source`) opens the input, feeds it rows, turns every :class:`RowProblem` (or a
missing field / wrong type) into a counted drop with the row index, runs the same content checks
on every produced row (empty prompt or reply, ``"N/A"``, identical pair, score tie), fills
``prompt_id``/``source``, and builds the Arrow dataset. ``max_rows`` stops reading once that many
canonical rows were produced.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset

from prefopt.data.io import Malformed, RawInput, open_input, refuse_unparsed
from prefopt.data.messages import RowProblem, reply_text
from prefopt.data.registry import Option
from prefopt.data.report import DropReport
from prefopt.data.schema import DatasetBuilder, finalize_row

HUB_OPTIONS: dict[str, Option] = {
    "config": Option(None, "hub dataset configuration (subset) name", "str"),
    "revision": Option(
        None, "hub dataset revision (commit, tag or branch) — pin it for reproducibility", "str"
    ),
    "data_dir": Option(None, "hub dataset sub-folder, e.g. harmless-base for Anthropic/hh-rlhf", "str"),
}
KEEP_TIES = Option(False, "keep pairs whose scores are equal (dropped as score_tie by default)", "bool")
FORMAT = Option(
    "conversational",
    "emit messages (conversational) or plain strings (text)",
    "str",
    ("conversational", "text"),
)


def options(**extra: Option) -> dict[str, Option]:
    """A source's option table: its own options plus the hub options."""
    return {**extra, **HUB_OPTIONS}


class RowContext:
    """Passed to ``convert``: the raw row index and a way to flag kept rows."""

    def __init__(self, report: DropReport):
        self.report = report
        self.index = -1

    def flag(self, reason: str, detail: str | None = None) -> None:
        self.report.flag(reason, self.index, detail)

    def drop(self, reason: str, detail: str | None = None) -> None:
        """Count one produced row as dropped (for sources that emit several rows per raw row)."""
        self.report.drop(reason, self.index, detail)


Convert = Callable[[dict[str, Any], RowContext], list[dict[str, Any]]]


def _describe(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing field {e.args[0]!r}"
    return f"{type(e).__name__}: {e}"


def check_row(row: dict[str, Any], kind: str, fmt: str, keep_ties: bool) -> None:
    """The content checks every canonical row passes (raises :class:`RowProblem`)."""
    conv = fmt == "conversational"
    fields = ("chosen", "rejected") if kind == "paired" else ("completion",)
    for f in ("prompt", *fields):
        value = row[f]
        if conv and not isinstance(value, list):
            raise RowProblem("malformed_row", f"{f} is {type(value).__name__}, expected messages")
        if not conv and not isinstance(value, str):
            raise RowProblem(
                "malformed_row", f"{f} is {type(value).__name__}, expected a string (text format)"
            )
    prompt = row["prompt"]
    if (not prompt) if conv else (not prompt.strip()):
        raise RowProblem("empty_prompt")
    if conv and not any(m["content"].strip() for m in prompt):
        raise RowProblem("empty_prompt")
    texts = {f: reply_text(row[f]) for f in fields}
    for f, text in texts.items():
        if not text.strip():
            raise RowProblem("empty_reply", f"{f} is empty")
    for f, text in texts.items():
        if text.strip() == "N/A":
            raise RowProblem("na_placeholder", f'{f} is the "N/A" placeholder')
    if kind == "paired":
        if row["chosen"] == row["rejected"]:
            raise RowProblem("identical_chosen_rejected")
        sc, sr = row.get("score_chosen"), row.get("score_rejected")
        if sc is not None and sr is not None:
            if sc == sr and not keep_ties:
                raise RowProblem("score_tie", f"both scored {sc:g}")
            if sc < sr:
                raise RowProblem("score_inverted", f"chosen scored {sc:g} < rejected {sr:g}")


def emit(
    raw: RawInput,
    convert: Convert,
    *,
    name: str,
    kind: str,
    fmt: str,
    report: DropReport,
    max_rows: int | None,
    keep_ties: bool = False,
) -> Dataset:
    """Run ``convert`` over ``raw`` rows and build the canonical dataset (see module docs)."""
    builder = DatasetBuilder(kind, fmt)
    ctx = RowContext(report)
    n_in = 0
    stopped = False
    malformed: list[Malformed] = []  # the first few, for the message when no row parses
    n_malformed = 0
    rows = raw.rows
    try:
        for index, row in rows:
            if max_rows is not None and builder.count >= max_rows:
                stopped = True
                break
            n_in += 1
            if isinstance(row, Malformed):
                report.drop("malformed_row", index, row.detail)
                n_malformed += 1
                if len(malformed) < 3:
                    malformed.append(row)
                continue
            if not isinstance(row, Mapping):
                report.drop("malformed_row", index, f"expected an object, got {type(row).__name__}")
                continue
            ctx.index = index
            try:
                produced = convert(dict(row), ctx)
            except RowProblem as p:
                report.drop(p.reason, index, p.detail)
                continue
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                report.drop("malformed_row", index, _describe(e))
                continue
            for out in produced:
                if max_rows is not None and builder.count >= max_rows:
                    stopped = True
                    break
                try:
                    check_row(out, kind, fmt, keep_ties)
                    final = finalize_row(out, kind, name)
                except RowProblem as p:
                    report.drop(p.reason, index, p.detail)
                    continue
                except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                    report.drop("malformed_row", index, _describe(e))
                    continue
                builder.add(final)
                report.kept(index)  # so later steps' drop examples can name this input row
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    refuse_unparsed(malformed, n_malformed, n_in, raw.description, f"data source {name}")
    ds = builder.finish()
    detail = raw.description + (f"; stopped after max_rows={max_rows}" if stopped else "")
    report.step(f"read {name}", n_in, len(ds), detail=detail)
    return ds


def read_source(
    spec: Mapping[str, Any],
    convert: Convert,
    *,
    name: str,
    kind: str,
    fmt: str,
    base_dir: Path | None,
    report: DropReport,
    default_split: str = "train",
    keep_ties: bool = False,
) -> Dataset:
    """Open ``spec["path"]`` (file, directory or hub id) and :func:`emit` its rows."""
    raw = open_input(
        spec.get("path"),
        base_dir=base_dir,
        split=spec.get("split"),
        default_split=default_split,
        where=f"data source {name}",
        config=spec.get("config"),
        revision=spec.get("revision"),
        data_dir=spec.get("data_dir"),
    )
    return emit(
        raw,
        convert,
        name=name,
        kind=kind,
        fmt=fmt,
        report=report,
        max_rows=spec.get("max_rows"),
        keep_ties=keep_ties,
    )
