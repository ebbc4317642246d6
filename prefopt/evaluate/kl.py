"""The KL(policy ‖ reference) figures of an evaluation, each labelled with the samples it was computed on
(used by the metrics, the report and the CLI, so the labels are the same everywhere)."""

from __future__ import annotations

from typing import Any


def kl_figures(result: dict) -> list[dict[str, Any]]:
    """Every KL(policy ‖ reference) estimate of an evaluation, each with the sample set it was computed on.

    There are two, on different samples, so they differ: ``sampling`` (the held-out prompts, the
    ``evaluation:`` section's samples per prompt, temperature and token cap) and, for the ground-truth
    world, ``world`` (the true-reward samples: the world's test prompts × 4 at temperature 1). The CLI
    summary, ``prefopt eval`` and report.md all print them through this function, under these labels.
    Returns ``[{"key", "value", "samples"}]`` (``key`` as in the summary)."""
    out: list[dict[str, Any]] = []
    samp = result.get("sampling") or {}
    if samp.get("kl_to_reference") is not None:
        k = samp.get("samples_per_prompt", 1)
        out.append(
            {
                "key": "kl_to_reference",
                "value": samp["kl_to_reference"],
                "samples": f"{samp.get('num_prompts', '?')} {samp.get('prompts_from', 'held-out')} prompts × {k} "
                f"sample{'s' if k != 1 else ''} at T={samp.get('temperature', 1.0):g}, ≤ {samp.get('max_new_tokens', '?')} "
                "new tokens",
            }
        )
    world = result.get("world") or {}
    pol = world.get("policy") or {}
    if pol.get("kl_to_reference") is not None:
        out.append(
            {
                "key": "kl_to_reference_world",
                "value": pol["kl_to_reference"],
                "samples": f"the true-reward samples: {pol.get('num_prompts', '?')} world:{pol.get('task', '?')} "
                f"test prompts × {pol.get('samples_per_prompt', '?')} at T=1",
            }
        )
    return out
