"""LLaMA-Factory's ShareGPT "ranking" format (``dpo_en_demo.json``).

Row: ``conversations`` — ``{"from": "human"|"gpt"|"system"|"observation"|"function_call",
"value": str}`` turns ending with the human turn being answered — and ``chosen``/``rejected``, each a
*single* ``{"from": "gpt", "value": str}`` message (a list of messages is accepted too). An optional
top-level ``system`` string becomes a leading system message.

Roles are mapped (``human``→user, ``gpt``→assistant, ``observation``→tool, ``function_call``→assistant;
TRL's ``maybe_convert_to_chatml`` renames the keys but leaves ``human``/``gpt``, which chat
templates reject). ``roles:`` adds mappings, ``columns:`` renames input columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefopt.core.errors import PrefoptError, did_you_mean
from prefopt.data.messages import ROLE_ALIASES, normalize_messages, require_assistant, require_text
from prefopt.data.registry import Option, register_source
from prefopt.data.report import DropReport
from prefopt.data.schema import ROLES
from prefopt.data.sources._base import RowContext, options, read_source

NAME = "sharegpt_ranking"
DEFAULT_COLUMNS = {
    "conversations": "conversations",
    "chosen": "chosen",
    "rejected": "rejected",
    "system": "system",
}


def check_columns(name: str, given: Mapping[str, Any] | None, defaults: dict[str, str]) -> dict[str, str]:
    """Merge a ``columns:`` option onto the defaults; unknown canonical names are errors."""
    out = dict(defaults)
    for key, value in (given or {}).items():
        if key not in defaults:
            raise PrefoptError(
                f'columns: unknown field "{key}".{did_you_mean(key, defaults)} {name} maps: {", ".join(defaults)}.',
                where=f"data source {name}",
                fix="write columns as {<field>: <column in your data>}.",
            )
        if not isinstance(value, str):
            raise PrefoptError(
                f"columns.{key} = {value!r} must be a column name.", where=f"data source {name}"
            )
        out[key] = value
    return out


def check_roles(name: str, given: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (given or {}).items():
        if value not in ROLES:
            raise PrefoptError(
                f"roles.{key} = {value!r} is not a role.{did_you_mean(str(value), ROLES)} Roles: {', '.join(ROLES)}.",
                where=f"data source {name}",
            )
        out[str(key).lower()] = value
    return {**ROLE_ALIASES, **out}


def make_convert(columns: dict[str, str], roles: dict[str, str]):
    def convert(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
        prompt = normalize_messages(row[columns["conversations"]], columns["conversations"], roles)
        system = row.get(columns["system"])
        if system is not None and (not prompt or prompt[0]["role"] != "system"):
            system = require_text(system, columns["system"])
            if system.strip():
                prompt = [{"role": "system", "content": system}, *prompt]
        chosen = require_assistant(
            normalize_messages(row[columns["chosen"]], columns["chosen"], roles), "chosen"
        )
        rejected = require_assistant(
            normalize_messages(row[columns["rejected"]], columns["rejected"], roles), "rejected"
        )
        return [{"prompt": prompt, "chosen": chosen, "rejected": rejected}]

    return convert


@register_source(
    NAME,
    options=options(
        columns=Option(
            None, "rename input columns: {conversations, chosen, rejected, system: <col>}", "mapping"
        ),
        roles=Option(
            None, "extra role names mapped onto user/assistant/system/tool, e.g. {bot: assistant}", "mapping"
        ),
    ),
    kinds=("paired",),
)
def read(spec: dict[str, Any], *, base_dir=None, seed: int = 0, report: DropReport):
    """LLaMA-Factory ShareGPT ranking: conversations + chosen/rejected message dicts, human/gpt roles."""
    columns = check_columns(NAME, spec["columns"], DEFAULT_COLUMNS)
    roles = check_roles(NAME, spec["roles"])
    return read_source(
        spec,
        make_convert(columns, roles),
        name=NAME,
        kind="paired",
        fmt="conversational",
        base_dir=base_dir,
        report=report,
    )


def detect(sample):
    """Claim ShareGPT ranking files: conversations + single-message chosen/rejected (see the registry)."""
    if sample.has("conversations", "chosen", "rejected") and all(
        sample.messages(c) for c in ("conversations", "chosen", "rejected")
    ):
        return 97, "conversations + chosen/rejected messages (LLaMA-Factory ShareGPT ranking, dpo_en_demo)"
    return None
