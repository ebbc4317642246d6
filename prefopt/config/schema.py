"""The base of every configuration schema (recipe, sweep, RLHF and iterative-DPO sections) and the one
translation of pydantic's validation errors into prefopt's error paragraph.

Unknown keys are rejected (``extra="forbid"``) and named with a suggestion and the keys allowed at that
place; a missing key, a wrong value and an unknown choice are each one sentence naming the dotted key.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from prefopt.core.errors import PrefoptError, did_you_mean


class StrictModel(BaseModel):
    """A schema section: unknown keys are errors, assignments are validated, and NaN / infinity are refused
    everywhere (they pass ``gt=0``-style bounds unnoticed, or fail them obscurely)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def models_in(annotation) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation refers to (``X``, ``X | None``, ``list[X]``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from models_in(arg)


def section_model(model: type[BaseModel], loc: Iterable[Any]) -> type[BaseModel] | None:
    """The model of the section at ``loc`` below ``model`` (list indices are skipped), or None."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or isinstance(part, int) or str(part).isdigit():
            continue
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = next(models_in(field.annotation), None)
    return current


def explain_validation_error(
    err: ValidationError,
    where: str,
    model: type[BaseModel],
    *,
    choices: dict[str, Iterable[str]] | None = None,
) -> PrefoptError:
    """One :class:`PrefoptError` paragraph for every problem pydantic found in ``model``'s input.

    ``choices`` maps a field name (the last part of a key, e.g. ``algorithm``) to its allowed values, for an
    ``unknown <field> "x". Did you mean ...? Choose one of: ...`` sentence instead of pydantic's."""
    choices = choices or {}
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        last = str(loc[-1]) if loc else ""
        if e["type"] == "extra_forbidden":
            parent = section_model(model, loc[:-1])
            options = list(parent.model_fields) if parent is not None else []
            lines.append(
                f'unknown key "{key}".{did_you_mean(loc[-1], options)}'
                + (f" Allowed here: {', '.join(options)}." if options else "")
            )
        elif e["type"] == "literal_error" and last in choices:
            allowed = list(choices[last])
            value = e.get("input")
            at = "" if key == last else f" ({key})"
            lines.append(
                f'unknown {last} "{value}"{at}.{did_you_mean(value, allowed)} Choose one of: {", ".join(allowed)}.'
            )
        elif e["type"] == "missing":
            lines.append(f'missing required key "{key}".')
        else:
            msg = e["msg"].removeprefix("Value error, ")
            value = e.get("input")
            hint = ""
            if e["type"] == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
                hint = ' YAML read it as a number: quote it (e.g. revision: "1234e56") to keep it text.'
            lines.append(f'"{key}" = {value!r}: {msg}.{hint}')
    return PrefoptError(" ".join(lines), where=where)


def validate(model: type[BaseModel], raw: dict, where: str, **kwargs):
    """``model(**raw)``, with validation errors explained (:func:`explain_validation_error`)."""
    try:
        return model(**raw)
    except ValidationError as err:
        raise explain_validation_error(err, where, model, **kwargs) from None
