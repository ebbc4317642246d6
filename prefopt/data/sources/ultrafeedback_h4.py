"""HuggingFaceH4/ultrafeedback_binarized (Zephyr's DPO data).

Row: string ``prompt``, ``prompt_id`` (sha256 of the prompt text), ``chosen``/``rejected`` as
``[user, assistant]`` message lists that *repeat the prompt*, ``messages``, and
``score_chosen``/``score_rejected`` (UltraFeedback ``overall_score``, 1–10, half points occur).

Handled: the string-prompt + message-list mix that crashes TRL 1.x (the explicit prompt is taken
from the shared message prefix, the string ``prompt`` column is only used when the lists carry no
user turn); score ties (the H4 build allows them: dropped as ``score_tie`` unless ``keep_ties``);
the ``"N/A"`` placeholder written for rows with fewer than two completions (``na_placeholder``);
identical chosen/rejected (possible when the build's re-draw loop timed out); empty replies. The
hub default split is ``train_prefs`` (also ``test_prefs``; the ``*_sft``/``*_gen`` splits carry
the same chosen/rejected columns). ``prompt_id`` is recomputed in prefopt's form.
"""

from __future__ import annotations

from typing import Any

from prefopt.data.messages import as_score, normalize_messages, require_text, split_implicit_prompt
from prefopt.data.registry import register_source
from prefopt.data.report import DropReport
from prefopt.data.sources._base import KEEP_TIES, RowContext, options, read_source

NAME = "ultrafeedback_h4"


def convert(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
    chosen = normalize_messages(row["chosen"], "chosen")
    rejected = normalize_messages(row["rejected"], "rejected")
    prompt, c, r = split_implicit_prompt(chosen, rejected)
    if not prompt and row.get("prompt") is not None:
        prompt = [{"role": "user", "content": require_text(row["prompt"], "prompt")}]
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
    """HuggingFaceH4/ultrafeedback_binarized: string prompt + [user, assistant] chosen/rejected, scores 1–10."""
    return read_source(
        spec,
        convert,
        name=NAME,
        kind="paired",
        fmt="conversational",
        base_dir=base_dir,
        report=report,
        default_split="train_prefs",
        keep_ties=spec["keep_ties"],
    )


def detect(sample):
    """Claim H4's build: string prompt + [user, assistant] chosen/rejected (+ prompt_id, messages, scores)."""
    if not (sample.has("prompt", "chosen", "rejected") and sample.strings("prompt")):
        return None
    if not (sample.conversations("chosen") and sample.conversations("rejected")):
        return None
    if sample.any_of("chosen-rating", "chosen_avg_rating"):
        return None  # Argilla's build
    marks = [c for c in ("prompt_id", "messages") if sample.has(c)]
    if marks and sample.has("score_chosen", "score_rejected"):
        return (
            95,
            f"string prompt + {', '.join(marks)} + conversation chosen/rejected + scores "
            "(HuggingFaceH4/ultrafeedback_binarized)",
        )
    if sample.has("score_chosen"):
        return (
            75,
            "string prompt + conversation chosen/rejected + scores (like HuggingFaceH4/ultrafeedback_binarized)",
        )
    return None
