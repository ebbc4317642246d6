"""The report.md paragraph on ``prefopt eval --judge``'s win rate (:mod:`prefopt.evaluate.judged`), kept
apart from it so that ``prefopt report`` imports no torch."""

from __future__ import annotations

import math


def _ci(values) -> str:
    if not values or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return "—"
    return f"{values[0]:.3f} – {values[1]:.3f}"


def report_lines(ev: dict) -> list[str]:
    """The report.md paragraph on the judged section (empty without one)."""
    j = ev.get("judged") or {}
    wr = j.get("win_rate")
    if not wr:
        return [f"- Win rate: {j['note']}."] if j.get("note") else []
    judge = (j.get("judge") or {}).get("name", "?")
    nv = sum((wr.get("no_verdict") or {}).values())
    conf = int(round(100 * wr.get("confidence", 0.95)))
    lines = [
        f"### Win rate against the {j.get('against', 'reference')} (judge `{judge}`)",
        "",
        "| | value | " + f"{conf} % CI |",
        "|---|---:|---:|",
        f"| win rate (win 1, tie ½) | {wr['win_rate']:.3f} | {_ci(wr.get('win_rate_ci'))} |",
        f"| length-controlled win rate | {wr['lc_win_rate']:.3f} | {_ci(wr.get('lc_win_rate_ci'))} |",
        "",
        f"- {wr['wins']} wins, {wr['ties']} ties, {wr['losses']} losses, {nv} without a verdict, on "
        f"{j['num_prompts']} {j['prompts_from']} × {j['samples_per_prompt']} at temperature {j['temperature']}; "
        f"mean length difference {wr.get('mean_length_delta', float('nan')):+.2f} tokens "
        f"(length coefficient θ₁ {wr.get('length_coef', float('nan')):.3f}; LC reads the fit at equal length).",
    ]
    if j.get("score"):
        s = j["score"]
        lines.append(
            f"- Mean judge score: policy {s['policy']:.4g}, {j.get('against', 'reference')} {s['other']:.4g} "
            f"(lift {s['lift']:+.4g})."
        )
    lines.append("")
    return lines
