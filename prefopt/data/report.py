"""The drop report: nothing in preprocessing disappears without a count and a reason.

Every step (reading a source, unpairing, dedupe, splitting, tokenising) records what went in, what
came out and, for each row it removed, a short snake_case reason (``identical_chosen_rejected``,
``empty_reply``, ``score_tie``, ``na_placeholder``, ``malformed_row``, ``duplicate``,
``below_score_margin``, ``prompt_fills_max_length``, ``truthful_qa_source``, ``no_counterpart``, ...)
with the first few row indices. Rows that are kept but worth a look (an HH reply that contains an
inner ``"\\n\\nHuman: "`` tag, say) are *flagged*: counted the same way, not removed. Truncation
counts from tokenisation are attached as well.

The report is printed, saved as JSON in the run directory, and with ``data.strict: true``
:meth:`DropReport.check_strict` turns any drop into a :class:`~prefopt.core.errors.PrefoptError`.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from prefopt.core.errors import PrefoptError

MAX_EXAMPLES = 10
"""Row indices kept per reason (the counts are always complete)."""
MAX_LOCATE_BYTES = 512 * 2**20
"""Larger input files get row numbers in the examples, not line numbers (finding lines re-reads the file)."""
_READ_DETAIL = re.compile(
    r"^(?:file (?P<file>.+?)|(?P<other>(?:directory|hub dataset) .+?))(?:; stopped after .*)?$"
)

REASONS: dict[str, str] = {
    "malformed_row": "the row could not be parsed (missing field, wrong type, bad JSON); the detail says which",
    "empty_prompt": "the prompt is empty",
    "empty_reply": "a reply (chosen, rejected or completion) is empty or whitespace",
    "na_placeholder": 'a reply is the literal "N/A" placeholder (UltraFeedback rows with < 2 completions)',
    "identical_chosen_rejected": "chosen and rejected are the same text",
    "score_tie": "score_chosen == score_rejected (keep with the source option keep_ties: true)",
    "score_inverted": "score_chosen < score_rejected",
    "prompt_mismatch": "chosen and rejected do not share the same prompt turns",
    "non_assistant_reply": "a reply contains non-assistant turns (the conversations diverge before the last reply)",
    "truthful_qa_source": "UltraFeedback row from truthful_qa (TruthfulQA contamination; drop_truthful_qa: false keeps it)",
    "too_few_completions": "a raw UltraFeedback row has fewer than 2 usable completions",
    "no_pair_above_margin": "no two completions of a raw UltraFeedback row differ by more than pair_margin",
    "inner_tag_in_reply": 'an HH-RLHF reply contains an inner "\\n\\nHuman:"/"\\n\\nAssistant:" tag',
    "duplicate": "an exact duplicate of an earlier row",
    "below_score_margin": "score_chosen - score_rejected is below data.min_score_margin",
    "missing_score": "data.min_score_margin is set but the row has no scores",
    "no_counterpart": "pairing found no row of the opposite label for this prompt",
    "prompt_fills_max_length": "the prompt leaves no room for a reply within training.max_length",
    "completion_repeats_prompt": "flag: the completion repeated the prompt turns, which were removed",
    "completion_empty_response": "flag: a raw UltraFeedback completion with an empty response was left out",
    "completion_without_score": "flag: a raw UltraFeedback completion without a usable score was left out",
    "non_alternating_turns": "flag: an HH-RLHF prompt has two turns of the same role in a row",
}
"""Known reasons with a one-line explanation (sources may add their own)."""


class DropReport:
    """Counts of rows in, rows out and rows dropped per reason, step by step.

    ``rows_in`` is the number of rows the first step read; ``rows_out`` the number the last step
    produced, minus any rows dropped after it (tokenisation drops rows without recording a step).
    """

    def __init__(self, where: str = "data"):
        self.where = where
        self.rows_in = 0
        self._rows_out = 0
        self.counts: Counter[str] = Counter()
        self.flags: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.flag_examples: dict[str, list[dict[str, Any]]] = {}
        self.truncation: dict[str, int] = {}
        self.steps: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self._mark: Counter[str] = Counter()
        self._pending = 0
        self._untagged: list[dict[str, Any]] = []
        # where each row of the current data came from: its row index in the input and the input
        # (a file path or a description), so examples of any step name the input's line or row
        self._kept: list[int] | None = None
        self._step_drops: list[int | None] = []
        self._origins: list[int] | None = None
        self._input: str | None = None
        self._input_is_file = False

    # ---------------------------------------------------------------------------------- recording
    @property
    def rows_out(self) -> int:
        return self._rows_out - self._pending if self.steps else self._rows_out

    @rows_out.setter
    def rows_out(self, value: int) -> None:
        self._rows_out = int(value)
        self._pending = 0

    @property
    def dropped(self) -> int:
        return sum(self.counts.values())

    def drop(self, reason: str, index: int | None = None, detail: str | None = None) -> None:
        """Count one removed row under ``reason`` (row ``index`` of the current step's input)."""
        self.counts[reason] += 1
        self._pending += 1
        self._step_drops.append(index)
        self._remember(self.examples, reason, index, detail)

    def kept(self, index: int) -> None:
        """A reader produced a kept row from input row ``index`` (called once per produced row, in
        order), so later steps' examples can name the input file and line that row came from."""
        if self._kept is None:
            self._kept = []
        self._kept.append(index)

    def flag(self, reason: str, index: int | None = None, detail: str | None = None) -> None:
        """Count one row that is kept but noteworthy."""
        self.flags[reason] += 1
        self._remember(self.flag_examples, reason, index, detail)

    def _remember(self, store: dict, reason: str, index: int | None, detail: str | None) -> None:
        examples = store.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            entry: dict[str, Any] = {"index": index}
            if detail:
                entry["detail"] = detail if len(detail) <= 300 else detail[:297] + "..."
            examples.append(entry)
            self._untagged.append(entry)

    def note(self, text: str) -> None:
        """A free-text remark (e.g. prompts shared by train and eval sources)."""
        self.notes.append(text)

    def note_truncation(self, d: dict[str, int]) -> None:
        """Add tokenisation's truncation counts (summed over calls)."""
        for key, value in d.items():
            self.truncation[key] = self.truncation.get(key, 0) + int(value)

    def step(self, name: str, rows_in: int, rows_out: int, detail: str | None = None) -> None:
        """Close a step: ``rows_in`` rows went in, ``rows_out`` came out; the drops recorded since
        the previous step belong to it."""
        drops = {r: c - self._mark.get(r, 0) for r, c in self.counts.items() if c - self._mark.get(r, 0) > 0}
        record: dict[str, Any] = {
            "step": name,
            "rows_in": int(rows_in),
            "rows_out": int(rows_out),
            "dropped": drops,
        }
        if detail:
            record["detail"] = detail
        if not self.steps:
            self.rows_in = int(rows_in)
        self.steps.append(record)
        for entry in self._untagged:
            entry.setdefault("step", name)
        self._locate(name, int(rows_in), int(rows_out), detail)
        self._untagged = []
        self._mark = Counter(self.counts)
        self._rows_out = int(rows_out)
        self._pending = 0

    def _locate(self, name: str, rows_in: int, rows_out: int, detail: str | None) -> None:
        """Give this step's examples their input row (and line, for JSON/JSONL files), then carry the
        row → input map through the step when it is one whose row mapping is known."""
        m = _READ_DETAIL.match(detail or "")
        if self._kept is not None or m:  # a reader's step: examples index the input itself
            if m:
                self._input = m["file"] or m["other"]
                self._input_is_file = bool(m["file"])
            else:
                self._input, self._input_is_file = None, False
            rows = {e["index"]: e["index"] for e in self._untagged if isinstance(e.get("index"), int)}
            self._origins = list(self._kept or [])
        elif self._origins is not None and len(self._origins) == rows_in:
            rows = {
                e["index"]: self._origins[e["index"]]
                for e in self._untagged
                if isinstance(e.get("index"), int) and 0 <= e["index"] < rows_in
            }
            dropped = {i for i in self._step_drops if i is not None}
            if name.startswith(("dedupe", "min_score_margin", "render chat template")) and (
                rows_in - len(dropped) == rows_out
            ):
                self._origins = [o for i, o in enumerate(self._origins) if i not in dropped]
            elif name.startswith("max_rows") and not dropped and rows_out <= rows_in:
                self._origins = self._origins[:rows_out]
            elif name == "unpair" and rows_out == 2 * rows_in:  # each pair → two rows, interleaved
                self._origins = [o for o in self._origins for _ in (0, 1)]
            else:
                self._origins = None
        else:
            rows, self._origins = {}, None
        self._kept, self._step_drops = None, []
        if self._input is None or not rows:
            return
        lines = _line_numbers(Path(self._input), set(rows.values())) if self._input_is_file else {}
        for entry in self._untagged:
            row = rows.get(entry.get("index"))
            if row is None:
                continue
            entry["input"] = self._input
            entry["row"] = row
            if row in lines:
                entry["line"] = lines[row]

    def merge(self, other: DropReport) -> DropReport:
        """Fold in the report of another part of the data (another source, the eval split):
        rows in/out and every count add up, steps are appended."""
        self.rows_in += other.rows_in
        self._rows_out += other.rows_out
        self.counts.update(other.counts)
        self._mark.update(other.counts)
        self.flags.update(other.flags)
        for store, theirs in ((self.examples, other.examples), (self.flag_examples, other.flag_examples)):
            for reason, entries in theirs.items():
                mine = store.setdefault(reason, [])
                mine.extend(dict(e) for e in entries[: MAX_EXAMPLES - len(mine)])
        self.note_truncation(other.truncation)
        self.steps.extend(dict(s) for s in other.steps)
        pending = other.counts - other._mark
        if other.steps and sum(pending.values()):
            self.steps.append(
                {
                    "step": f"{other.where} (after last step)",
                    "rows_in": other._rows_out,
                    "rows_out": other.rows_out,
                    "dropped": dict(pending),
                }
            )
        self.notes.extend(other.notes)
        return self

    # ---------------------------------------------------------------------------------- output
    def as_dict(self) -> dict[str, Any]:
        steps = list(self.steps)
        pending = self.counts - self._mark
        if self.steps and sum(pending.values()):
            steps.append(
                {
                    "step": "after last step",
                    "rows_in": self._rows_out,
                    "rows_out": self.rows_out,
                    "dropped": dict(pending),
                }
            )
        return {
            "where": self.where,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": self.dropped,
            "drops": dict(self.counts.most_common()),
            "drop_examples": {r: self.examples.get(r, []) for r, _ in self.counts.most_common()},
            "reasons": {r: REASONS[r] for r in list(self.counts) + list(self.flags) if r in REASONS},
            "flags": dict(self.flags.most_common()),
            "flag_examples": {r: self.flag_examples.get(r, []) for r, _ in self.flags.most_common()},
            "truncation": dict(self.truncation),
            "steps": steps,
            "notes": list(self.notes),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    def summary(self) -> str:
        """A short human-readable table."""
        d = self.as_dict()
        lines = [
            f"{self.where}: {d['rows_in']:,} rows in -> {d['rows_out']:,} rows out, {d['dropped']:,} dropped"
        ]
        if d["steps"]:
            width = max(len(s["step"]) for s in d["steps"])
            lines.append(f"  {'step':<{width}}  {'in':>9}  {'out':>9}  {'dropped':>8}")
            for s in d["steps"]:
                n = sum(s["dropped"].values())
                lines.append(f"  {s['step']:<{width}}  {s['rows_in']:>9,}  {s['rows_out']:>9,}  {n:>8,}")
        if self.counts:
            lines.append("  dropped, by reason:")
            lines.extend(self._reason_lines(self.counts, self.examples))
        if self.flags:
            lines.append("  kept but flagged:")
            lines.extend(self._reason_lines(self.flags, self.flag_examples))
        if any(self.truncation.values()):
            parts = ", ".join(f"{k} {v:,}" for k, v in self.truncation.items())
            lines.append(f"  truncation: {parts}")
        for text in self.notes:
            lines.append(f"  note: {text}")
        return "\n".join(lines)

    @staticmethod
    def _reason_lines(counts: Counter[str], examples: dict[str, list[dict[str, Any]]]) -> list[str]:
        width = max(len(r) for r in counts)
        out = []
        for reason, n in counts.most_common():
            rows = _format_rows(examples.get(reason, []), n)
            out.append(f"    {reason:<{width}}  {n:>8,}" + (f"  ({rows})" if rows else ""))
        return out

    def check_strict(self, where: str) -> None:
        """Raise :class:`PrefoptError` listing every reason when any row was dropped."""
        if not self.counts:
            return
        parts = []
        for reason, n in self.counts.most_common():
            rows = _format_rows(self.examples.get(reason, []), n, with_detail=True)
            parts.append(f"{reason}: {n:,}" + (f" ({rows})" if rows else ""))
        raise PrefoptError(
            f"strict mode: {self.dropped:,} of {self.rows_in:,} rows were dropped — "
            + "; ".join(parts)
            + ".",
            where=where,
            fix="clean those rows in the source data (named by file and line, or by row number of the input or of "
            "the step that dropped them), use a "
            "source option that keeps them where one exists (e.g. keep_ties: true), or set data.strict: false to let "
            "prefopt drop them with this report.",
        )


def _line_numbers(path: Path, rows: set[int]) -> dict[int, int]:
    """Row index → 1-based line where that row starts, for a JSON-lines or JSON-array file read the way
    :mod:`prefopt.data.io` reads it (blank lines skipped). Empty when the file cannot be scanned."""
    name = path.name.lower()
    if not rows or not name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
        return {}
    try:
        if path.stat().st_size > MAX_LOCATE_BYTES:
            return {}
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8", errors="replace")
    except OSError:
        return {}
    out: dict[int, int] = {}
    last = max(rows)
    if text.lstrip()[:1] == "[":
        decoder = json.JSONDecoder()
        pos = text.index("[") + 1
        line = 1 + text.count("\n", 0, pos)
        for i in range(last + 1):
            gap = pos
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            line += text.count("\n", gap, pos)
            if pos >= len(text) or text[pos] == "]":
                break
            if i in rows:
                out[i] = line
            try:
                _, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError:
                break
            line += text.count("\n", pos, end)
            pos = end
        return out
    index = 0
    for lineno, line_text in enumerate(text.split("\n"), start=1):
        if not line_text.strip():
            continue
        if index in rows:
            out[index] = lineno
        index += 1
        if index > last:
            break
    return out


def _format_rows(entries: list[dict[str, Any]], total: int, with_detail: bool = False) -> str:
    """``e.g. train.jsonl lines 87, 101, 102, ...``: the input file and line of each example where
    known, else its row of the input (``row 3 of hub dataset ...``), else its row of the step's input."""
    if not entries:
        return ""
    parts: list[str] = []
    shown = entries[: 5 if with_detail else 3]
    last_file = None
    for e in shown:
        idx = e.get("index")
        detail = f": {e['detail']}" if with_detail and e.get("detail") else ""
        if e.get("line") is not None:
            name = Path(e["input"]).name
            if name == last_file and not detail:  # same file as the previous example: "lines 87, 101"
                parts[-1] = parts[-1].replace(f"{name} line ", f"{name} lines ", 1) + f", {e['line']}"
                continue
            text = f"{name} line {e['line']}"
            last_file = None if detail else name
        else:
            last_file = None
            if e.get("input") is not None:
                where = Path(e["input"]).name if Path(e["input"]).is_absolute() else e["input"]
                text = f"row {e['row']} of {where}"
            else:
                text = f"row {idx}" if idx is not None else "row ?"
                if e.get("step"):
                    text += f" of {e['step']}"
        parts.append(text + detail)
    more = ", ..." if total > len(shown) else ""
    return ("e.g. " if total > 1 else "") + ", ".join(parts) + more
