"""openbmb/UltraFeedback, raw: one instruction, four (sometimes fewer) rated completions.

Row: ``source``, ``instruction``, ``models``, ``completions[]`` each with ``model``, ``response``,
``annotations`` (per aspect — ``helpfulness``, ``honesty``, ``instruction_following``,
``truthfulness`` — a ``Rating`` **string** ``"1"``–``"5"`` or ``"N/A"``), ``overall_score`` (1–10)
and ``fine-grained_score``.

Binarisation (``binarize``), scored by ``score: overall`` (``overall_score``, H4's choice) or
``score: mean_rating`` (mean of the selected aspects' ratings, ``"N/A"`` skipped, Argilla's choice):

* ``best_vs_random`` — the H4 recipe: chosen = highest score (first on ties), rejected = a seeded
  random *other* completion (may tie: ``score_tie`` unless ``keep_ties``);
* ``best_vs_random_lower`` — Argilla's: rejected drawn among strictly lower-scored completions;
* ``best_vs_worst`` — rejected = the lowest-scored other completion;
* ``all_pairs`` — every ordered pair whose score difference exceeds ``pair_margin`` (a prompt then
  repeats, so split train/eval by prompt — prefopt always does);
* ``unpaired`` — every completion becomes a KTO row with ``label = score >= threshold``.

Completions with an empty response or no usable score are left out (flagged per completion); a row
left with fewer than two (one for ``unpaired``) is dropped as ``too_few_completions``.
``truthful_qa`` rows are dropped by default (TruthfulQA contamination; H4, Argilla and AllenAI all
drop them). ``source`` becomes ``ultrafeedback_raw/<subset>``.
"""

from __future__ import annotations

import random
from typing import Any

from prefopt.core.errors import PrefoptError, did_you_mean
from prefopt.data.messages import RowProblem, as_score, require_text
from prefopt.data.registry import Option, register_source
from prefopt.data.report import DropReport
from prefopt.data.sources._base import KEEP_TIES, RowContext, options, read_source

NAME = "ultrafeedback_raw"
ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
POLICIES = ("best_vs_random", "best_vs_random_lower", "best_vs_worst", "all_pairs", "unpaired")


def completion_score(comp: dict[str, Any], score: str, aspects: tuple[str, ...]) -> float | None:
    """``overall_score``, or the mean of the aspects' string ratings (``"N/A"`` skipped)."""
    if score == "overall":
        return as_score(comp.get("overall_score"), "overall_score")
    annotations = comp.get("annotations")
    if not isinstance(annotations, dict):
        if aspects == ASPECTS and "fine-grained_score" in comp:
            return as_score(comp["fine-grained_score"], "fine-grained_score")
        return None
    ratings = []
    for aspect in aspects:
        ann = annotations.get(aspect)
        if not isinstance(ann, dict):
            continue
        value = as_score(ann.get("Rating"), f"annotations.{aspect}.Rating")
        if value is not None:
            ratings.append(value)
    return sum(ratings) / len(ratings) if ratings else None


def make_convert(opts: dict[str, Any], seed: int):
    policy: str = opts["binarize"]
    score_kind: str = opts["score"]
    aspects = tuple(opts["aspects"])
    margin = float(opts["pair_margin"])
    threshold = opts["threshold"]
    rng = random.Random(seed)

    def convert(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
        subset = row.get("source")
        if opts["drop_truthful_qa"] and subset == "truthful_qa":
            raise RowProblem("truthful_qa_source")
        prompt = [{"role": "user", "content": require_text(row["instruction"], "instruction")}]
        completions = row["completions"]
        if not isinstance(completions, list):
            raise RowProblem("malformed_row", "completions is not a list")
        cands: list[tuple[float, str]] = []
        for j, comp in enumerate(completions):
            if not isinstance(comp, dict):
                raise RowProblem("malformed_row", f"completions[{j}] is not an object")
            response = require_text(comp.get("response"), f"completions[{j}].response")
            value = completion_score(comp, score_kind, aspects)
            if not response.strip():
                ctx.flag("completion_empty_response", f"completions[{j}]")
            elif value is None:
                ctx.flag("completion_without_score", f"completions[{j}] ({score_kind})")
            else:
                cands.append((value, response))
        source = f"{NAME}/{subset}" if isinstance(subset, str) and subset else NAME
        need = 1 if policy == "unpaired" else 2
        if len(cands) < need:
            raise RowProblem("too_few_completions", f"{len(cands)} usable of {len(completions)} completions")

        def pair(ci: int, ri: int) -> dict[str, Any]:
            return {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": cands[ci][1]}],
                "rejected": [{"role": "assistant", "content": cands[ri][1]}],
                "score_chosen": cands[ci][0],
                "score_rejected": cands[ri][0],
                "source": source,
            }

        if policy == "unpaired":
            return [
                {
                    "prompt": prompt,
                    "completion": [{"role": "assistant", "content": text}],
                    "label": value >= threshold,
                    "score": value,
                    "source": source,
                }
                for value, text in cands
            ]
        best = max(range(len(cands)), key=lambda i: cands[i][0])  # first maximum, like H4's max()
        others = [i for i in range(len(cands)) if i != best]
        if policy == "best_vs_random":
            return [pair(best, rng.choice(others))]
        if policy == "best_vs_random_lower":
            lower = [i for i in others if cands[i][0] < cands[best][0]]
            if not lower:
                raise RowProblem("score_tie", f"every completion scored {cands[best][0]:g}")
            return [pair(best, rng.choice(lower))]
        if policy == "best_vs_worst":
            worst = min(reversed(others), key=lambda i: cands[i][0])  # last minimum
            return [pair(best, worst)]
        pairs = [
            pair(i, j)
            for i in range(len(cands))
            for j in range(len(cands))
            if i != j and cands[i][0] - cands[j][0] > margin
        ]
        if not pairs:
            raise RowProblem("no_pair_above_margin", f"no two completions differ by more than {margin:g}")
        return pairs

    return convert


def _check(opts: dict[str, Any]) -> None:
    where = f"data source {NAME}"
    for aspect in opts["aspects"]:
        if aspect not in ASPECTS:
            hint = did_you_mean(aspect, ASPECTS)
            if aspect == "instruction-following":
                hint = ' The raw data spells it "instruction_following" (underscore).'
            raise PrefoptError(
                f'unknown aspect "{aspect}".{hint} Aspects: {", ".join(ASPECTS)}.', where=where
            )
    if not opts["aspects"]:
        raise PrefoptError("aspects is empty.", where=where, fix=f"list one or more of {', '.join(ASPECTS)}.")
    if opts["binarize"] == "unpaired" and opts["threshold"] is None:
        raise PrefoptError(
            "binarize: unpaired needs a rating threshold (label = score >= threshold).",
            where=where,
            fix="set threshold, e.g. 8.0 with score: overall (1–10) or 4.5 with score: mean_rating (1–5).",
        )


@register_source(
    NAME,
    options=options(
        binarize=Option("best_vs_random", "binarisation policy: " + ", ".join(POLICIES), "str", POLICIES),
        score=Option(
            "overall",
            "rank completions by overall_score (1–10) or mean_rating (mean aspect rating, 1–5)",
            "str",
            ("overall", "mean_rating"),
        ),
        aspects=Option(list(ASPECTS), "aspects averaged by score: mean_rating", "list"),
        pair_margin=Option(0.0, "all_pairs: keep pairs whose score difference is greater than this", "float"),
        threshold=Option(
            None, "unpaired: label = score >= threshold (required for binarize: unpaired)", "float"
        ),
        drop_truthful_qa=Option(True, "drop rows whose source is truthful_qa", "bool"),
        keep_ties=KEEP_TIES,
        seed=Option(None, "seed for the random rejected draw (default: the recipe seed; H4 used 42)", "int"),
    ),
    kinds=("paired", "unpaired"),
)
def read(spec: dict[str, Any], *, base_dir=None, seed: int = 0, report: DropReport):
    """openbmb/UltraFeedback raw: binarised by a policy you name, or unpaired by a rating threshold."""
    _check(spec)
    kind = "unpaired" if spec["binarize"] == "unpaired" else "paired"
    draw_seed = spec["seed"] if spec["seed"] is not None else seed
    return read_source(
        spec,
        make_convert(spec, draw_seed),
        name=NAME,
        kind=kind,
        fmt="conversational",
        base_dir=base_dir,
        report=report,
        keep_ties=spec["keep_ties"],
    )


def detect(sample):
    """Claim raw UltraFeedback rows: instruction + a list of rated completions (see the registry)."""

    def rated(v):
        return isinstance(v, list) and bool(v) and all(isinstance(c, dict) and "response" in c for c in v)

    if sample.has("instruction", "completions") and sample.share("completions", rated):
        return 97, "instruction + completions[] with responses and ratings (openbmb/UltraFeedback, raw)"
    return None
