"""trl-lib/ultrafeedback_binarized (TRL's default DPO/Reward demo set).

Row: ``chosen``/``rejected`` as ``[user, assistant]`` message lists with an *implicit* prompt (no
prompt column), ``score_chosen``/``score_rejected`` (1–10). The prompt is the shared message
prefix (message level, not TRL's character level); inherits H4's ties (``score_tie`` unless
``keep_ties``), identical pairs and empty replies.
"""

from __future__ import annotations

from typing import Any

from prefopt.data.messages import as_score, normalize_messages, split_implicit_prompt
from prefopt.data.registry import register_source
from prefopt.data.report import DropReport
from prefopt.data.sources._base import KEEP_TIES, RowContext, options, read_source

NAME = "ultrafeedback_trl"


def convert(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
    chosen = normalize_messages(row["chosen"], "chosen")
    rejected = normalize_messages(row["rejected"], "rejected")
    prompt, c, r = split_implicit_prompt(chosen, rejected)
    return [
        {
            "prompt": prompt,
            "chosen": c,
            "rejected": r,
            "score_chosen": as_score(row.get("score_chosen"), "score_chosen"),
            "score_rejected": as_score(row.get("score_rejected"), "score_rejected"),
        }
    ]


@register_source(NAME, options=options(keep_ties=KEEP_TIES), kinds=("paired",))
def read(spec: dict[str, Any], *, base_dir=None, seed: int = 0, report: DropReport):
    """trl-lib/ultrafeedback_binarized: implicit-prompt message lists, scores 1–10."""
    return read_source(
        spec,
        convert,
        name=NAME,
        kind="paired",
        fmt="conversational",
        base_dir=base_dir,
        report=report,
        keep_ties=spec["keep_ties"],
    )


def detect(sample):
    """Claim TRL's build: implicit-prompt conversation chosen/rejected + scores, no prompt column."""
    if sample.has("prompt") or not sample.has("chosen", "rejected"):
        return None
    if not (sample.conversations("chosen") and sample.conversations("rejected")):
        return None
    if sample.has("score_chosen", "score_rejected"):
        return 92, "conversation chosen/rejected (implicit prompt) + scores (trl-lib/ultrafeedback_binarized)"
    return 60, "conversation chosen/rejected with an implicit prompt (like trl-lib/ultrafeedback_binarized)"
