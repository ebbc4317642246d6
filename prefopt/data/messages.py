"""Row-level parsing shared by the sources: messages, labels, scores, implicit prompts.

Everything here raises :class:`RowProblem` for a bad row; the source driver turns that into a
counted drop (reason + row index) instead of a crash.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from prefopt.data.schema import ROLES

ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "developer": "developer",
    # ShareGPT / LLaMA-Factory
    "human": "user",
    "gpt": "assistant",
    "observation": "tool",
    "function_call": "assistant",
}


_CANONICAL_ROLES = frozenset(ROLES)


class RowProblem(Exception):
    """A row that cannot be used; ``reason`` is the drop-report reason."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # typed content parts: [{"type": "text", "text": ...}] (OpenAI) or {"type": "text", "value": ...}
        # (LLaMA-Factory v1); only text is supported.
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, Mapping):
                raise RowProblem("malformed_row", f"{where}: content part {part!r} is not an object")
            kind = part.get("type", "text")
            if kind != "text":
                raise RowProblem(
                    "malformed_row", f'{where}: content part of type "{kind}"; prefopt trains on text only'
                )
            text = part.get("text", part.get("value"))
            if not isinstance(text, str):
                raise RowProblem("malformed_row", f"{where}: text content part without a string text/value")
            texts.append(text)
        return "".join(texts)
    if content is None:
        raise RowProblem("malformed_row", f"{where}: message has no content")
    raise RowProblem("malformed_row", f"{where}: content is {type(content).__name__}, expected a string")


def normalize_message(m: Any, where: str, role_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """One message as ``{"role", "content"}``; accepts ``role/content`` and ShareGPT ``from/value``."""
    if type(m) is dict and role_map is None:  # fast path: already canonical apart from key order
        role, content = m.get("role"), m.get("content")
        if type(content) is str and role in _CANONICAL_ROLES:
            return {"role": role, "content": content}
    if not isinstance(m, Mapping):
        raise RowProblem("malformed_row", f"{where}: expected a message object, got {type(m).__name__}")
    if "role" in m:
        role, content = m["role"], m.get("content")
    elif "from" in m:
        role, content = m["from"], m.get("value")
    else:
        raise RowProblem("malformed_row", f"{where}: message without a role/from key (keys: {sorted(m)})")
    aliases = ROLE_ALIASES if role_map is None else {**ROLE_ALIASES, **role_map}
    mapped = aliases.get(str(role).lower()) if isinstance(role, str) else None
    if mapped is None or mapped not in ROLES:
        raise RowProblem(
            "malformed_row",
            f'{where}: unknown role "{role}" (known: {", ".join(sorted(aliases))}; see the roles option)',
        )
    return {"role": mapped, "content": _content_text(content, where)}


def normalize_messages(
    value: Any, where: str, role_map: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """A list of messages (a single message object is accepted as a one-element list)."""
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise RowProblem("malformed_row", f"{where}: expected a list of messages, got {type(value).__name__}")
    return [normalize_message(m, f"{where}[{i}]", role_map) for i, m in enumerate(value)]


def is_message_list(value: Any) -> bool:
    """True for a list whose first element is a message object (or an empty list)."""
    if isinstance(value, Mapping):
        return "role" in value or "from" in value
    return isinstance(value, list) and (
        not value or (isinstance(value[0], Mapping) and ("role" in value[0] or "from" in value[0]))
    )


def require_text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RowProblem("malformed_row", f"{where}: expected a string, got {type(value).__name__}")
    return value


def as_label(value: Any, where: str = "label") -> bool:
    """A KTO label: bool, 0/1, or the strings true/false (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RowProblem("malformed_row", f"{where}: {value!r} is not a boolean label (true/false)")


NA_STRINGS = frozenset({"n/a", "na", "none", ""})


def as_score(value: Any, where: str = "score") -> float | None:
    """A numeric score; None, NaN and "N/A"-like strings give None. Other text is malformed."""
    if isinstance(value, bool):
        raise RowProblem("malformed_row", f"{where}: {value!r} is not a number")
    if value is None:
        return None
    if isinstance(value, (int, float)):
        f = float(value)
        return None if math.isnan(f) else f
    if isinstance(value, str):
        if value.strip().lower() in NA_STRINGS:
            return None
        try:
            f = float(value)
        except ValueError:
            raise RowProblem("malformed_row", f"{where}: {value!r} is not a number") from None
        return None if math.isnan(f) else f
    raise RowProblem("malformed_row", f"{where}: {value!r} is not a number")


def _all_assistant(msgs: list[dict[str, str]]) -> bool:
    return all(m["role"] == "assistant" for m in msgs)


def require_assistant(msgs: list[dict[str, str]], where: str) -> list[dict[str, str]]:
    """Replies must be assistant turns only."""
    if not _all_assistant(msgs):
        roles = [m["role"] for m in msgs]
        raise RowProblem(
            "non_assistant_reply", f"{where} holds turns {roles}; a reply must be assistant turns only"
        )
    return msgs


def split_implicit_prompt(
    chosen: list[dict[str, str]], rejected: list[dict[str, str]]
) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """Explicit ``(prompt, chosen_reply, rejected_reply)`` from two whole conversations.

    The prompt is the longest common prefix of messages, snapped back so that it ends before the
    trailing run of assistant turns (so it ends with a user/tool/system turn and each reply starts
    with the assistant). Identical conversations give identical replies (the caller counts them);
    a reply that would contain a user turn raises ``non_assistant_reply``.
    """
    k = 0
    for c, r in zip(chosen, rejected):
        if c != r:
            break
        k += 1
    while k > 0 and chosen[k - 1]["role"] == "assistant":
        k -= 1
    prompt, c_reply, r_reply = chosen[:k], chosen[k:], rejected[k:]
    require_assistant(c_reply, "chosen")
    require_assistant(r_reply, "rejected")
    return prompt, c_reply, r_reply


def split_last_reply(
    messages: list[dict[str, str]], where: str
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``(prompt, reply)`` where reply is the trailing run of assistant turns."""
    k = len(messages)
    while k > 0 and messages[k - 1]["role"] == "assistant":
        k -= 1
    if k == len(messages):
        last = messages[-1]["role"] if messages else "nothing"
        raise RowProblem("malformed_row", f"{where} ends with {last}, not with an assistant reply")
    return messages[:k], messages[k:]


def strip_repeated_prompt(
    prompt: list[dict[str, str]], completion: list[dict[str, str]]
) -> tuple[list[dict[str, str]], bool]:
    """Drop a copy of ``prompt`` at the start of ``completion`` (argilla/kto-mix-15k stores the whole
    conversation in ``completion``). Returns the reply and whether a copy was removed."""
    if prompt and len(completion) > len(prompt) and completion[: len(prompt)] == prompt:
        return completion[len(prompt) :], True
    return completion, False


def reply_text(value: str | list[dict[str, str]]) -> str:
    """The text of a reply (string, or the assistant messages joined)."""
    if isinstance(value, str):
        return value
    return "".join(m["content"] for m in value)
