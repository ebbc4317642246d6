"""The ``ensemble`` judge: several score judges combined into one score per (prompt, reply).

``combine``:

* ``weighted_sum`` — Σ wᵢ·sᵢ with ``weights`` (one per judge): per-axis reward models stacked, e.g.
  helpfulness × 1 + harmlessness × 2;
* ``mean`` — the plain mean;
* ``min`` — the worst member's score (a reply is only as good as its weakest axis);
* ``mean_minus_std`` — mean − k·std over the members (population std, ``k`` default 1): a
  conservative score that penalises replies the members disagree on (as in reward-model ensembles
  against over-optimisation, Coste et al. 2024).

Members must give scores (an ``llm`` judge cannot be a member) and are combined as they are, so their
scales must be comparable. A member that gives no score for a reply makes the ensemble give none for
it (counted as a failure, never filled in).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from prefopt.core.errors import PrefoptError
from prefopt.judge.base import (
    Judge,
    JudgeSection,
    build_judge,
    clean_score,
    parse_judge_config,
    register_judge_type,
)

COMBINES = ("weighted_sum", "mean", "min", "mean_minus_std")


class EnsembleSection(JudgeSection):
    type: Literal["ensemble"] = "ensemble"
    judges: list[dict[str, Any]] = Field(..., min_length=1, description="The member judges' blocks.")
    combine: Literal["weighted_sum", "mean", "min", "mean_minus_std"] = "mean"
    weights: list[float] | None = Field(None, description="weighted_sum: one weight per judge.")
    k: float = Field(1.0, ge=0, description="mean_minus_std: the multiple of the std subtracted.")

    def check(self, where: str) -> None:
        if self.combine == "weighted_sum":
            if self.weights is None:
                raise PrefoptError(
                    "combine: weighted_sum needs weights.",
                    where=f"{where}.weights",
                    fix="give one weight per judge.",
                )
        if self.weights is not None and len(self.weights) != len(self.judges):
            raise PrefoptError(
                f"{len(self.weights)} weights for {len(self.judges)} judges.",
                where=f"{where}.weights",
                fix="give exactly one weight per judge, in the order of judge.judges.",
            )
        if self.weights is not None and self.combine != "weighted_sum":
            raise PrefoptError(
                f"weights are only used by combine: weighted_sum (combine is {self.combine}).",
                where=f"{where}.weights",
                fix="remove weights or set combine: weighted_sum.",
            )
        for i, member in enumerate(self.judges):
            sub = parse_judge_config(member, f"{where}.judges[{i}]")
            if sub.type == "llm":
                raise PrefoptError(
                    "an llm judge gives pairwise verdicts, not scores, so it cannot be an ensemble member.",
                    where=f"{where}.judges[{i}]",
                    fix="ensemble score judges (callable, reward_model, ensemble); use the llm judge on its own.",
                )


def combine_scores(values: list[float | None], combine: str, weights=None, k: float = 1.0) -> float | None:
    if any(v is None for v in values):
        return None
    xs = [float(v) for v in values]
    if combine == "weighted_sum":
        return float(sum(w * x for w, x in zip(weights, xs)))
    mean = sum(xs) / len(xs)
    if combine == "mean":
        return mean
    if combine == "min":
        return min(xs)
    if combine == "mean_minus_std":
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
        return mean - k * std
    raise ValueError(f"unknown combine {combine}")


class EnsembleJudge(Judge):
    type = "ensemble"

    def __init__(
        self,
        judges: list[Judge],
        *,
        name: str,
        combine: str = "mean",
        weights: list[float] | None = None,
        k: float = 1.0,
        where: str = "judge",
        tie_margin: float = 0.0,
    ):
        super().__init__(name, where=where, tie_margin=tie_margin)
        if combine not in COMBINES:
            raise PrefoptError(f'unknown combine "{combine}".', where=f"{where}.combine")
        if combine == "weighted_sum" and (weights is None or len(weights) != len(judges)):
            raise PrefoptError("weighted_sum needs one weight per judge.", where=f"{where}.weights")
        for j in judges:
            if not j.gives_scores:
                raise PrefoptError(f'judge "{j.name}" gives no scores.', where=j.where)
        self.judges = judges
        self.combine = combine
        self.weights = weights
        self.k = k

    def score(self, prompts, replies, *, indices=None) -> list[float | None]:
        per_member = [j.score(prompts, replies, indices=indices) for j in self.judges]
        return [
            clean_score(combine_scores([m[i] for m in per_member], self.combine, self.weights, self.k))
            for i in range(len(prompts))
        ]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "combine": self.combine,
            "weights": self.weights,
            "k": self.k,
            "judges": [j.describe() for j in self.judges],
        }


@register_judge_type("ensemble", EnsembleSection)
def _build(cfg: EnsembleSection, *, where: str = "judge", base_dir=None) -> EnsembleJudge:
    members = [
        build_judge(m, where=f"{where}.judges[{i}]", base_dir=base_dir) for i, m in enumerate(cfg.judges)
    ]
    name = cfg.name or f"ensemble:{cfg.combine}(" + ", ".join(m.name for m in members) + ")"
    return EnsembleJudge(
        members,
        name=name,
        combine=cfg.combine,
        weights=cfg.weights,
        k=cfg.k,
        where=where,
        tie_margin=cfg.tie_margin,
    )
