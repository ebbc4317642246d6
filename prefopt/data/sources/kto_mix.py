"""trl-lib/kto-mix-14k (and other conversational unpaired sets in TRL's form).

Row: ``prompt`` (messages, possibly multi-turn: it includes Capybara dialogues), ``completion``
(one assistant message, prompt not repeated), ``label`` (bool). Every dpo-mix-7k pair became one
``True`` and one ``False`` row, so each prompt appears twice; prefopt keeps them in one prompt
group for the train/eval split and for re-pairing.

Handled: a ``completion`` that repeats the whole conversation (argilla/kto-mix-15k, as mapped by
LLaMA-Factory) has the copied prompt removed (flagged ``completion_repeats_prompt``); labels given
as 0/1 or "true"/"false"; a completion holding a user turn (``non_assistant_reply``); empty and
``"N/A"`` completions. An optional numeric ``score`` column is kept.
"""

from __future__ import annotations

from typing import Any

from prefopt.data.messages import (
    as_label,
    as_score,
    normalize_messages,
    require_assistant,
    strip_repeated_prompt,
)
from prefopt.data.registry import register_source
from prefopt.data.report import DropReport
from prefopt.data.sources._base import RowContext, options, read_source

NAME = "kto_mix"


def convert(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
    prompt = normalize_messages(row["prompt"], "prompt")
    completion = normalize_messages(row["completion"], "completion")
    completion, stripped = strip_repeated_prompt(prompt, completion)
    if stripped:
        ctx.flag("completion_repeats_prompt")
    require_assistant(completion, "completion")
    return [
        {
            "prompt": prompt,
            "completion": completion,
            "label": as_label(row["label"]),
            "score": as_score(row.get("score"), "score"),
        }
    ]


@register_source(NAME, options=options(), kinds=("unpaired",))
def read(spec: dict[str, Any], *, base_dir=None, seed: int = 0, report: DropReport):
    """trl-lib/kto-mix-14k: message-list prompt/completion, bool label; multi-turn prompts."""
    return read_source(
        spec, convert, name=NAME, kind="unpaired", fmt="conversational", base_dir=base_dir, report=report
    )


def detect(sample):
    """Claim message-list prompt/completion + label rows that are not prefopt's own output."""
    if not (sample.has("prompt", "completion", "label") and sample.booleans("label")):
        return None
    if not (sample.messages("prompt") and sample.messages("completion")):
        return None
    if sample.has("prompt_id", "source"):  # prefopt's canonical output: the generic reader's
        return 60, "message-list prompt/completion + label, but with prefopt's prompt_id/source columns"
    return 90, "message-list prompt/completion + bool label (trl-lib/kto-mix-14k)"
