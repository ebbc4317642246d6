"""argilla/ultrafeedback-binarized-preferences-cleaned (and its predecessor).

Row: ``source``, string ``prompt``, ``chosen``/``rejected`` as ``[user, assistant]`` message lists
(prompt repeated inside), **hyphenated** ``chosen-rating``/``rejected-rating`` (mean of the four
aspect ratings, **1–5 scale**, not H4's 1–10), ``chosen-model``/``rejected-model``. Train split
only (use ``data.eval_fraction`` for a held-out set).

Also reads the predecessor ``argilla/ultrafeedback-binarized-preferences`` schema (``instruction``,
``chosen_response``/``rejected_response`` strings, ``chosen_avg_rating``/``rejected_avg_rating``).

Handled: hyphenated columns; ties ("in the worst case" per the card: ``score_tie`` unless
``keep_ties``); identical chosen/rejected text (seen in dpo-mix-7k built on it); ``truthful_qa``
rows (``truthful_qa_source`` unless ``drop_truthful_qa: false``). Scores stay on the 1–5 scale, so
a ``min_score_margin`` is in those units. ``source`` becomes ``ultrafeedback_argilla/<subset>``.
"""

from __future__ import annotations

from typing import Any

from prefopt.data.messages import (
    RowProblem,
    as_score,
    normalize_messages,
    require_text,
    split_implicit_prompt,
)
from prefopt.data.registry import Option, register_source
from prefopt.data.report import DropReport
from prefopt.data.sources._base import KEEP_TIES, RowContext, options, read_source

NAME = "ultrafeedback_argilla"
RATING_KEYS = {
    "chosen": ("chosen-rating", "chosen_rating", "chosen_avg_rating"),
    "rejected": ("rejected-rating", "rejected_rating", "rejected_avg_rating"),
}


def _rating(row: dict[str, Any], side: str) -> float | None:
    for key in RATING_KEYS[side]:
        if key in row:
            return as_score(row[key], key)
    return None


def make_convert(drop_truthful_qa: bool):
    def convert(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
        subset = row.get("source")
        if drop_truthful_qa and subset == "truthful_qa":
            raise RowProblem("truthful_qa_source")
        if "chosen" in row:
            chosen = normalize_messages(row["chosen"], "chosen")
            rejected = normalize_messages(row["rejected"], "rejected")
            prompt, c, r = split_implicit_prompt(chosen, rejected)
            if not prompt and row.get("prompt") is not None:
                prompt = [{"role": "user", "content": require_text(row["prompt"], "prompt")}]
        else:  # predecessor schema: instruction + chosen_response / rejected_response strings
            prompt = [{"role": "user", "content": require_text(row["instruction"], "instruction")}]
            c = [{"role": "assistant", "content": require_text(row["chosen_response"], "chosen_response")}]
            r = [
                {"role": "assistant", "content": require_text(row["rejected_response"], "rejected_response")}
            ]
        return [
            {
                "prompt": prompt,
                "chosen": c,
                "rejected": r,
                "score_chosen": _rating(row, "chosen"),
                "score_rejected": _rating(row, "rejected"),
                "source": f"{NAME}/{subset}" if isinstance(subset, str) and subset else NAME,
            }
        ]

    return convert


@register_source(
    NAME,
    options=options(
        keep_ties=KEEP_TIES,
        drop_truthful_qa=Option(True, "drop rows whose UltraFeedback source is truthful_qa", "bool"),
    ),
    kinds=("paired",),
)
def read(spec: dict[str, Any], *, base_dir=None, seed: int = 0, report: DropReport):
    """argilla/ultrafeedback-binarized-preferences-cleaned: hyphenated columns, ratings 1–5, train only."""
    return read_source(
        spec,
        make_convert(spec["drop_truthful_qa"]),
        name=NAME,
        kind="paired",
        fmt="conversational",
        base_dir=base_dir,
        report=report,
        keep_ties=spec["keep_ties"],
    )


def detect(sample):
    """Claim Argilla's UltraFeedback builds: hyphenated ratings, or the predecessor's columns."""
    rating = sample.any_of("chosen-rating", "rejected-rating", "chosen_avg_rating")
    if rating and sample.has("chosen", "rejected") and sample.messages("chosen"):
        return (
            96,
            f"message-list chosen/rejected + {rating} (argilla/ultrafeedback-binarized-preferences-cleaned)",
        )
    if sample.has("instruction", "chosen_response", "rejected_response"):
        return (
            96,
            "instruction, chosen_response, rejected_response (argilla/ultrafeedback-binarized-preferences)",
        )
    return None
