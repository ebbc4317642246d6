"""``prefopt data inspect``: what a dataset holds before you train on it.

Counts (rows, prompt groups, sources), label balance with the KTO weights the paper's rule
suggests, token-length percentiles for a given tokenizer (exactly as training tokenises), and the
rows that preprocessing would question: duplicates, score ties, identical pairs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from datasets import Dataset

from prefopt.config.fidelity import KTO_RATIO_BOUNDS, auto_kto_weights
from prefopt.data.fast_tokenize import token_lengths
from prefopt.data.schema import data_format, data_kind
from prefopt.data.transforms import duplicate_indices

PERCENTILES = (50, 90, 95, 99)
KTO_RATIO = KTO_RATIO_BOUNDS


def kto_weights(n_desirable: int, n_undesirable: int) -> dict[str, Any]:
    """KTO's class-weight rule (Ethayarajh et al. 2024, Eq. 8; TRL's KTOTrainer warns with it):
    choose λ_D, λ_U so that ``λ_D·n_D / (λ_U·n_U)`` lies in [1, 4/3].

    Returns the ratio at the default weights (1, 1), whether it is in range, the admissible range of
    ``desirable_weight`` with ``undesirable_weight = 1`` and of ``undesirable_weight`` with
    ``desirable_weight = 1``, and the suggestion: the weights ``prefopt train`` sets when a recipe gives
    none (:func:`prefopt.config.fidelity.auto_kto_weights`, ratio 1.33, the rule's upper end)."""
    lo, hi = KTO_RATIO
    if n_desirable == 0 or n_undesirable == 0:
        return {
            "ratio": None,
            "in_range": False,
            "suggested": None,
            "note": "one label is missing entirely; KTO needs both desirable and undesirable rows",
        }
    ratio = n_desirable / n_undesirable
    out: dict[str, Any] = {
        "ratio": round(ratio, 4),
        "in_range": lo <= ratio <= hi,
        "desirable_weight_range": [round(lo / ratio, 3), round(hi / ratio, 3)],
        "undesirable_weight_range": [round(ratio / hi, 3), round(ratio / lo, 3)],
    }
    wd, wu = auto_kto_weights(n_desirable, n_undesirable)
    out["suggested"] = {"desirable_weight": wd, "undesirable_weight": wu}
    return out


def _percentiles(values: np.ndarray) -> dict[str, int]:
    if len(values) == 0:
        return {}
    out = {f"p{p}": int(np.percentile(values, p, method="nearest")) for p in PERCENTILES}
    out["max"] = int(values.max())
    out["mean"] = round(float(values.mean()), 1)  # type: ignore[assignment]
    return out


def inspect_dataset(
    ds: Dataset,
    tokenizer: Any = None,
    max_length: int | None = None,
    num_proc: int | None = None,
) -> dict[str, Any]:
    """A summary dict of a canonical dataset (see the module docstring)."""
    kind, fmt = data_kind(ds), data_format(ds)
    table = ds.with_format("arrow")[:] if len(ds) else None
    pids = table.column("prompt_id").to_pylist() if table is not None else []
    per_prompt = Counter(pids)
    info: dict[str, Any] = {
        "rows": len(ds),
        "kind": kind,
        "format": fmt,
        "prompt_groups": len(per_prompt),
        "max_rows_per_prompt": max(per_prompt.values(), default=0),
        "sources": dict(Counter(table.column("source").to_pylist()).most_common(10))
        if table is not None
        else {},
        "duplicates": len(duplicate_indices(ds)) if len(ds) else 0,
    }
    if fmt == "conversational" and table is not None:
        prompts = table.column("prompt").to_pylist()
        info["multi_turn_prompts"] = sum(1 for p in prompts if sum(m["role"] != "system" for m in p) > 1)
        info["prompts_with_system"] = sum(1 for p in prompts if p and p[0]["role"] == "system")
    if kind == "paired" and table is None:  # every row dropped: zero counts, not missing keys
        info.update(scored_pairs=0, score_ties=0, identical_pairs=0)
    if kind == "unpaired" and table is None:
        info["labels"] = {"desirable": 0, "undesirable": 0}
        info["kto_weights"] = kto_weights(0, 0)
    if kind == "paired" and table is not None:
        sc = table.column("score_chosen").to_pylist()
        sr = table.column("score_rejected").to_pylist()
        scored = [(a, b) for a, b in zip(sc, sr) if a is not None and b is not None]
        info["scored_pairs"] = len(scored)
        info["score_ties"] = sum(1 for a, b in scored if a == b)
        if scored:
            margins = np.array([a - b for a, b in scored])
            info["score_margin"] = {
                "min": float(margins.min()),
                "mean": round(float(margins.mean()), 3),
                "max": float(margins.max()),
            }
        chosen, rejected = table.column("chosen").to_pylist(), table.column("rejected").to_pylist()
        info["identical_pairs"] = sum(1 for a, b in zip(chosen, rejected) if a == b)
    if kind == "unpaired" and table is not None:
        labels = table.column("label").to_pylist()
        n_d = sum(1 for v in labels if v)
        n_u = len(labels) - n_d
        info["labels"] = {"desirable": n_d, "undesirable": n_u}
        info["kto_weights"] = kto_weights(n_d, n_u)
    if tokenizer is not None and len(ds):
        lengths = token_lengths(ds, kind, tokenizer, num_proc=num_proc)
        fields = [f for f in lengths if f != "prompt"]
        tokens: dict[str, Any] = {f: _percentiles(v) for f, v in lengths.items()}
        totals = np.maximum.reduce([lengths["prompt"] + lengths[f] for f in fields])
        tokens["prompt+reply"] = _percentiles(totals)
        if max_length is not None:
            tokens["rows_over_max_length"] = int((totals > max_length).sum())
            tokens["max_length"] = max_length
        info["tokens"] = tokens
    return info


def format_inspection(info: dict[str, Any], title: str = "") -> str:
    """The summary as a short human-readable text."""
    lines = [f"{title}" if title else "dataset"]
    lines.append(f"  {info['rows']:,} rows, {info['kind']}, {info['format']}")
    lines.append(
        f"  {info['prompt_groups']:,} distinct prompts (up to {info['max_rows_per_prompt']} rows per prompt)"
    )
    if "multi_turn_prompts" in info:
        lines.append(
            f"  {info['multi_turn_prompts']:,} multi-turn prompts, {info['prompts_with_system']:,} with a system message"
        )
    if info["sources"]:
        lines.append("  sources: " + ", ".join(f"{k} {v:,}" for k, v in info["sources"].items()))
    lines.append(f"  exact duplicates: {info['duplicates']:,}")
    if info["kind"] == "paired":
        lines.append(f"  identical chosen/rejected: {info['identical_pairs']:,}")
        lines.append(f"  pairs with scores: {info['scored_pairs']:,}, score ties: {info['score_ties']:,}")
        if "score_margin" in info:
            m = info["score_margin"]
            lines.append(f"  score margin: min {m['min']:g}, mean {m['mean']:g}, max {m['max']:g}")
    if "labels" in info:
        lab = info["labels"]
        total = max(1, lab["desirable"] + lab["undesirable"])
        lines.append(
            f"  labels: {lab['desirable']:,} desirable ({lab['desirable'] / total:.1%}), "
            f"{lab['undesirable']:,} undesirable"
        )
        w = info["kto_weights"]
        if w.get("ratio") is None:
            lines.append(f"  KTO weights: {w['note']}")
        else:
            s = w["suggested"]
            status = "within" if w["in_range"] else "outside"
            lines.append(
                f"  KTO weights: n_D/n_U = {w['ratio']:.3f}, {status} the 1:1–4:3 rule; without weights prefopt train sets "
                f"loss.desirable_weight {s['desirable_weight']:g}, loss.undesirable_weight {s['undesirable_weight']:g} "
                f"(desirable_weight {w['desirable_weight_range'][0]:g}–{w['desirable_weight_range'][1]:g} with "
                f"undesirable 1, or undesirable_weight {w['undesirable_weight_range'][0]:g}–"
                f"{w['undesirable_weight_range'][1]:g} with desirable 1)"
            )
    if "tokens" in info:
        tok = info["tokens"]
        header = "  ".join(f"{'p' + str(p):>6}" for p in PERCENTILES)
        lines.append(f"  {'tokens':<13}{header}  {'max':>7}  {'mean':>8}")
        for field in [k for k in tok if isinstance(tok[k], dict)]:
            v = tok[field]
            if not v:
                continue
            cells = "  ".join(f"{v[f'p{p}']:>6,}" for p in PERCENTILES)
            lines.append(f"  {field:<13}{cells}  {v['max']:>7,}  {v['mean']:>8,.1f}")
        if "rows_over_max_length" in tok:
            lines.append(
                f"  rows longer than max_length={tok['max_length']}: {tok['rows_over_max_length']:,}"
            )
    return "\n".join(lines)
