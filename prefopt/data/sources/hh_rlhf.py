"""Anthropic/hh-rlhf: raw transcripts, prompt implicit in both sides.

Row: ``chosen`` and ``rejected`` strings, each a whole transcript
``"\\n\\nHuman: …\\n\\nAssistant: …\\n\\nHuman: …\\n\\nAssistant: <final reply>"``.

Splitting (datasets.md §9.3): the prompt is the common prefix of the two transcripts *snapped
back to the last* ``"\\n\\nAssistant: "`` inside it, so a shared first word of the replies never
leaks into the prompt (TRL's character-level ``extract_prompt`` cuts mid-word there) and a chosen
reply that is a prefix of the rejected one still splits at the turn. The prompt is then parsed into
turns on the exact tags ``"\\n\\nHuman: "`` and ``"\\n\\nAssistant: "`` only (a ``"Human:"`` inside a
reply is text), and must end with a Human turn.

Counted, not crashed on: empty final replies (``empty_reply``; rows ending in
``"\\n\\nAssistant: "``), replies containing an inner tag (flagged ``inner_tag_in_reply`` and kept,
or dropped with ``inner_tags: drop``), transcripts not starting with a Human turn or whose prompt
ends with an Assistant turn (``malformed_row``), non-alternating turns inside the prompt (flagged).
Turn text is stripped of surrounding whitespace (the double spaces after tags are common).

``format: text`` keeps TRL's standard form instead: prompt = transcript up to and including the
final ``"\\n\\nAssistant:"``, replies keep their leading space.
On the hub, pick a subset with ``data_dir`` (``harmless-base``, ``helpful-base``, ``helpful-online``,
``helpful-rejection-sampled``); local ``.jsonl.gz`` files are read directly.
"""

from __future__ import annotations

import os
import re
from typing import Any

from prefopt.data.messages import RowProblem, require_text
from prefopt.data.registry import Option, register_source
from prefopt.data.report import DropReport
from prefopt.data.sources._base import FORMAT, RowContext, options, read_source

NAME = "hh_rlhf"
HUMAN = "\n\nHuman: "
ASSISTANT = "\n\nAssistant: "
TAG = re.compile(r"\n\n(Human|Assistant): ")
INNER_TAG = re.compile(r"\n\n(?:Human|Assistant):")
ROLE = {"Human": "user", "Assistant": "assistant"}


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
    """``(prompt_transcript, chosen_reply, rejected_reply)``: the prompt ends just before the final
    ``"\\n\\nAssistant: "`` tag the two sides share."""
    # a transcript may end in the tag without its trailing space; give it one so the tag matches
    if chosen.endswith(ASSISTANT[:-1]):
        chosen += " "
    if rejected.endswith(ASSISTANT[:-1]):
        rejected += " "
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        raise RowProblem("malformed_row", 'chosen and rejected share no turn ending in "\\n\\nAssistant: "')
    start = cut + len(ASSISTANT)
    return chosen[:cut], chosen[start:], rejected[start:]


def parse_turns(transcript: str) -> list[dict[str, str]]:
    """Messages from a transcript, on the exact tags only."""
    if transcript.startswith(HUMAN[2:]):  # tolerate a missing leading "\n\n"
        transcript = "\n\n" + transcript
    parts = TAG.split(transcript)
    if parts[0].strip():
        raise RowProblem("malformed_row", 'transcript does not start with "\\n\\nHuman: "')
    return [{"role": ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def make_convert(fmt: str, inner_tags: str):
    def convert(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
        chosen = require_text(row["chosen"], "chosen")
        rejected = require_text(row["rejected"], "rejected")
        prompt_text, c, r = split_transcripts(chosen, rejected)
        turns = parse_turns(prompt_text)
        if not turns:
            raise RowProblem("empty_prompt")
        if turns[-1]["role"] != "user":
            raise RowProblem("malformed_row", "the prompt ends with an Assistant turn, not a Human turn")
        if any(a["role"] == b["role"] for a, b in zip(turns, turns[1:])):
            ctx.flag("non_alternating_turns")
        if INNER_TAG.search(c) or INNER_TAG.search(r):
            if inner_tags == "drop":
                raise RowProblem("inner_tag_in_reply")
            ctx.flag("inner_tag_in_reply")
        if fmt == "text":
            head = prompt_text + ASSISTANT[:-1]
            return [{"prompt": head, "chosen": " " + c, "rejected": " " + r}]
        return [
            {
                "prompt": turns,
                "chosen": [{"role": "assistant", "content": c.strip()}],
                "rejected": [{"role": "assistant", "content": r.strip()}],
            }
        ]

    return convert


@register_source(
    NAME,
    options=options(
        format=FORMAT,
        inner_tags=Option(
            "keep",
            "replies with an inner Human:/Assistant: tag: keep (flagged) or drop",
            "str",
            ("keep", "drop"),
        ),
    ),
    kinds=("paired",),
)
def read(spec: dict[str, Any], *, base_dir=None, seed: int = 0, report: DropReport):
    """Anthropic/hh-rlhf raw transcripts: prompt = common prefix snapped to the last Assistant tag."""
    fmt = spec["format"]
    return read_source(
        spec,
        make_convert(fmt, spec["inner_tags"]),
        name=NAME,
        kind="paired",
        fmt=fmt,
        base_dir=base_dir,
        report=report,
    )


def detect(sample):
    """Claim files whose chosen/rejected are whole Human:/Assistant: transcripts (see the registry)."""

    def transcript(v):
        return v.lstrip("\n").startswith("Human:") and "\n\nAssistant:" in v

    if sample.has("chosen", "rejected") and all(
        sample.strings(c) and sample.share(c, transcript) for c in ("chosen", "rejected")
    ):
        return 97, "chosen/rejected are whole Human:/Assistant: transcripts (Anthropic/hh-rlhf)"
    return None
