"""LLaMA-Factory's KTO format: a whole conversation in ``messages`` plus a bool ``label``.

Row: ``messages`` (``role``/``content`` or ShareGPT ``from``/``value`` messages) ending with the
assistant reply being judged, ``label`` (``kto_tag`` in LLaMA-Factory's dataset_info mapping: use
``columns: {label: kto_tag}``). The completion is the trailing run of assistant turns, the prompt
everything before it. A conversation that does not end with an assistant turn is a
``malformed_row``; unknown roles too (extend them with ``roles: {bot: assistant}``).
"""

from __future__ import annotations

from typing import Any

from prefopt.data.messages import as_label, normalize_messages, split_last_reply
from prefopt.data.registry import Option, register_source
from prefopt.data.report import DropReport
from prefopt.data.sources._base import RowContext, options, read_source
from prefopt.data.sources.sharegpt_ranking import check_columns, check_roles

NAME = "messages_label"
DEFAULT_COLUMNS = {"messages": "messages", "label": "label"}


def make_convert(columns: dict[str, str], roles: dict[str, str]):
    def convert(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
        messages = normalize_messages(row[columns["messages"]], columns["messages"], roles)
        prompt, completion = split_last_reply(messages, columns["messages"])
        return [
            {
                "prompt": prompt,
                "completion": completion,
                "label": as_label(row[columns["label"]], columns["label"]),
            }
        ]

    return convert


@register_source(
    NAME,
    options=options(
        columns=Option(
            None, "rename input columns: {messages: <col>, label: <col>} (e.g. label: kto_tag)", "mapping"
        ),
        roles=Option(
            None, "extra role names mapped onto user/assistant/system/tool, e.g. {bot: assistant}", "mapping"
        ),
    ),
    kinds=("unpaired",),
)
def read(spec: dict[str, Any], *, base_dir=None, seed: int = 0, report: DropReport):
    """LLaMA-Factory KTO style: messages (completion = last assistant turn) + bool label."""
    columns = check_columns(NAME, spec["columns"], DEFAULT_COLUMNS)
    roles = check_roles(NAME, spec["roles"])
    return read_source(
        spec,
        make_convert(columns, roles),
        name=NAME,
        kind="unpaired",
        fmt="conversational",
        base_dir=base_dir,
        report=report,
    )


def detect(sample):
    """Claim a whole conversation + bool label (LLaMA-Factory KTO); names the columns when they differ."""
    messages = sample.any_of("messages", "conversations")
    label = sample.any_of("label", "kto_tag")
    if messages is None or label is None or sample.has("chosen") or sample.has("completion"):
        return None
    if not (sample.conversations(messages) and sample.booleans(label)):
        return None
    columns = {k: v for k, v in (("messages", messages), ("label", label)) if k != v}
    return (
        95,
        f"{messages} (a whole conversation) + bool {label} (LLaMA-Factory KTO, kto_en_demo)",
        {"columns": columns} if columns else {},
    )
