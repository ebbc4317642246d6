"""The comparison's tables: rows sorted by algorithm and parameter, compare.md, and iterative DPO against
offline DPO at comparable KL."""

from __future__ import annotations

import math
import statistics

from prefopt.config.algorithms import ALGORITHMS, DPO, spec_or_none
from prefopt.studies.compare.sweep import MAIN_PARAM, STUDIES, SYMBOLS, fmt_param

ALGORITHM_ORDER = ("reference", *ALGORITHMS, *STUDIES)
"""Row order of the table (then by parameter and seed)."""


def fmt_number(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def param_label(res: dict) -> str:
    params = res.get("params") or {}
    return ", ".join(f"{SYMBOLS.get(k, k)}={fmt_param(v)}" for k, v in params.items())


def row_kind(res: dict) -> str:
    """The table's first column: the algorithm, or a study's variant (defended RLHF: ``rlhf-ens4``)."""
    return res.get("variant") or res.get("algorithm", "")


def _sort_key(res: dict):
    alg = res.get("algorithm", "")
    order = ALGORITHM_ORDER.index(alg) if alg in ALGORITHM_ORDER else len(ALGORITHM_ORDER)
    params = res.get("params") or {}
    main = MAIN_PARAM.get(alg)
    vals = tuple(
        float(v) if isinstance(v, (int, float)) else 0.0
        for v in ([params.get(main)] if main in params else [])
        + [v for k, v in sorted(params.items()) if k != main]
    )
    return (order, alg, res.get("variant") or "", vals, res.get("seed") or 0)


def sorted_rows(summary: dict) -> list[dict]:
    return [summary["reference"], *sorted(summary["points"], key=_sort_key)]


def format_markdown(summary: dict) -> str:
    rows = sorted_rows(summary)
    ev = summary["evaluation"]
    judged = any("win_rate" in (r.get("eval") or {}) for r in rows)
    n_prompts = (summary["reference"].get("eval") or {}).get("num_prompts", ev["num_prompts"])
    lines = [
        f"# prefopt compare — world task `{summary['task']}`",
        "",
        f"Sweep: `{summary.get('sweep')}` · wall time {summary['wall_s']:.0f} s (this invocation; all points: "
        f"{summary.get('points_wall_s', summary['wall_s']):.0f} s wall, {summary.get('points_cpu_s', 0):.0f} s CPU) · "
        f"{summary['hardware'].get('cpu_count')} CPU(s), torch threads {summary.get('torch_threads')} · "
        f"load average at start {summary['load_average']['start'][0]:.1f}",
        "",
        "| algorithm | parameters | seed | true reward (sampled) | true reward (greedy) | KL to ref | "
        "pref. acc. | logp acc. | train s | wall s | CPU s | peak RSS MB |"
        + (" win rate (LC) |" if judged else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if judged else ""),
    ]
    for r in rows:
        e = r.get("eval") or {}
        if r.get("status") != "finished":
            lines.append(
                f"| {row_kind(r)} | {param_label(r)} | {r.get('seed')} | failed: {r.get('error')} "
                "| | | | | | | | |"
            )
            continue
        lines.append(
            f"| {row_kind(r)} | {param_label(r) or '—'} | {fmt_number(r.get('seed'))} | {fmt_number(e.get('reward_sampled'))} | "
            f"{fmt_number(e.get('reward_greedy'))} | {fmt_number(e.get('kl_to_reference'))} | {fmt_number(e.get('pref_accuracy'))} | "
            f"{fmt_number(e.get('logp_accuracy'))} | {fmt_number(r.get('train_s'), 1)} | "
            f"{fmt_number(r.get('cumulative_wall_s', r.get('wall_s')), 1)} | "
            f"{fmt_number(r.get('cumulative_cpu_s', r.get('cpu_s')), 1)} | {fmt_number(r.get('peak_rss_mb'), 0)} |"
            + (f" {win_rate_cell(e)} |" if judged else "")
        )
    lines += [
        "",
        f"True reward: mean exact-answer reward on {n_prompts} held-out prompts, {ev['samples_per_prompt']} "
        f"samples each at T = 1 (sampled) and one greedy answer; KL(π‖π_ref) on those samples (nats/sequence). "
        f"Pref. acc.: held-out pairs (drawn from {ev['pref_prompts']} world test prompts) ranked by log π − log π_ref "
        "(summed over the reply, the same for every algorithm); logp acc.: ranked by log π alone. "
        "Wall/CPU s and peak RSS cover training and evaluation of the point (rlhf: reward model + policy; "
        "iterative DPO: cumulative up to that round, sampling and per-round evaluation included); train s is "
        "training alone (iterative DPO: that round's). Peak RSS is the whole process's.",
    ]
    cmp = summary.get("iterative_vs_offline_dpo")
    if cmp:
        lines += ["", "## Iterative vs offline DPO", "", cmp["text"]]
    online = online_vs_others(summary["points"])
    if online:
        lines += ["", "## Online DPO", "", *online]
    lines += ["", "![frontier](frontier.png)", ""]
    return "\n".join(lines)


def win_rate_cell(e: dict) -> str:
    """``0.612 (LC 0.580)`` from a point's ``win_rate`` / ``lc_win_rate`` (eval.json's summary keys)."""
    if e.get("win_rate") is None:
        return "—"
    return f"{fmt_number(e.get('win_rate'))} (LC {fmt_number(e.get('lc_win_rate'))})"


def iterative_vs_offline(results: list[dict]) -> dict | None:
    """Iterative DPO's final round against offline DPO at comparable KL: the offline frontier (the best
    offline reward at a KL no larger than iterative's × 1.25) and the nearest-KL offline point."""
    it = [
        r
        for r in results
        if r.get("algorithm") == "iterative_dpo" and r.get("status") == "finished" and r.get("final")
    ]
    off = [r for r in results if r.get("algorithm") == DPO and r.get("status") == "finished"]
    if not it or not off:
        return None
    out = []
    for final in it:
        kl = final["eval"]["kl_to_reference"]
        reward = final["eval"]["reward_sampled"]
        # the same seed's offline points when there are any (same data draw and evaluation), else all
        pool = [r for r in off if r.get("seed") == final.get("seed")] or off
        nearest = min(pool, key=lambda r: abs(r["eval"]["kl_to_reference"] - kl))
        within = [r for r in pool if r["eval"]["kl_to_reference"] <= max(kl * 1.25, kl + 0.05)]
        best = max(within, key=lambda r: r["eval"]["reward_sampled"]) if within else None
        out.append(
            {
                "iterative": {"name": final["name"], "reward_sampled": reward, "kl": kl},
                "nearest_offline": {
                    "name": nearest["name"],
                    "reward_sampled": nearest["eval"]["reward_sampled"],
                    "kl": nearest["eval"]["kl_to_reference"],
                },
                "best_offline_at_comparable_kl": None
                if best is None
                else {
                    "name": best["name"],
                    "reward_sampled": best["eval"]["reward_sampled"],
                    "kl": best["eval"]["kl_to_reference"],
                },
                "beats_offline": best is None or reward > best["eval"]["reward_sampled"],
            }
        )
    first = out[0]
    b = first["best_offline_at_comparable_kl"]
    text = (
        f"Iterative DPO ({first['iterative']['name']}): true reward {first['iterative']['reward_sampled']:.3f} at "
        f"KL {first['iterative']['kl']:.3f}. "
    )
    if b is None:
        text += "No offline DPO point has a KL that low or lower."
    else:
        text += (
            f"Best offline DPO at KL ≤ max(1.25 × that, +0.05): {b['name']}, {b['reward_sampled']:.3f} at KL "
            f"{b['kl']:.3f} → iterative {'beats' if first['beats_offline'] else 'does not beat'} offline "
            f"({first['iterative']['reward_sampled'] - b['reward_sampled']:+.3f})."
        )
    n = first["nearest_offline"]
    if b is None or n["name"] != b["name"]:
        text += (
            f" Nearest-KL offline DPO: {n['name']}, {n['reward_sampled']:.3f} at KL {n['kl']:.3f} "
            f"({first['iterative']['reward_sampled'] - n['reward_sampled']:+.3f})."
        )
    if len(out) > 1:

        def spread(values: list[float]) -> str:
            return f"{statistics.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})"

        wins = sum(o["beats_offline"] for o in out)
        near = [o["nearest_offline"] for o in out]
        text = (
            f"Over {len(out)} seeds, iterative DPO's final round: true reward "
            f"{spread([o['iterative']['reward_sampled'] for o in out])} at KL "
            f"{spread([o['iterative']['kl'] for o in out])}; the same seeds' nearest-KL offline DPO: "
            f"{spread([n['reward_sampled'] for n in near])} at KL {spread([n['kl'] for n in near])}. "
            f"Iterative beats offline DPO at comparable KL on {wins} of {len(out)} seeds. Per seed: {text}"
        )
        for o in out[1:]:
            b = o["best_offline_at_comparable_kl"]
            text += (
                f" {o['iterative']['name']}: {o['iterative']['reward_sampled']:.3f} at KL {o['iterative']['kl']:.3f}"
                + (
                    f" vs {b['name']} {b['reward_sampled']:.3f} at KL {b['kl']:.3f}."
                    if b
                    else f" (no offline point at that KL or lower; nearest {o['nearest_offline']['name']} "
                    f"{o['nearest_offline']['reward_sampled']:.3f} at KL {o['nearest_offline']['kl']:.3f})."
                )
            )
    if len({r.get("seed") for r in off}) < 2:
        text += " One training seed per point: add seeds (`seeds: [...]`) before reading gaps of a few hundredths."
    return {"runs": out, "beats_offline": all(o["beats_offline"] for o in out), "text": text}


def _is_online(r: dict) -> bool:
    spec = spec_or_none(r.get("algorithm", ""))
    return spec is not None and spec.samples_online


def _at(r: dict | None) -> str:
    if r is None:
        return "—"
    e = r["eval"]
    return f"{fmt_number(e['reward_sampled'])} @ {fmt_number(e['kl_to_reference'])}"


def _mean_at(pool: list[dict]) -> str:
    """Mean true reward (its range) and mean KL of some points, as table cells."""
    if not pool:
        return "— | —"
    rw = [x["eval"]["reward_sampled"] for x in pool]
    kl = [x["eval"]["kl_to_reference"] for x in pool]
    return f"{statistics.mean(rw):.3f} ({min(rw):.3f}–{max(rw):.3f}) | {statistics.mean(kl):.3f}"


def _same_seed(pool: list[dict], r: dict) -> list[dict]:
    return [x for x in pool if x.get("seed") == r.get("seed")]


def _nearest_kl(pool: list[dict], kl: float) -> dict | None:
    return min(pool, key=lambda x: abs(x["eval"]["kl_to_reference"] - kl)) if pool else None


def online_vs_others(results: list[dict]) -> list[str]:
    """compare.md's online DPO section: each finished online point with its training statistics (the judge's
    mean score over the sampled replies, the fraction of tied prompts, whether the KL budget stopped it), and
    the same seed's offline DPO (nearest KL), iterative DPO round nearest in KL and iterative DPO's final
    round, each as ``true reward @ KL``. Empty when the sweep has no online point."""
    done = [r for r in results if r.get("status") == "finished" and r.get("eval")]
    online = sorted((r for r in done if _is_online(r)), key=_sort_key)
    if not online:
        return []
    offline = [r for r in done if r.get("algorithm") == DPO]
    rounds = [r for r in done if r.get("algorithm") == "iterative_dpo"]
    lines = [
        "| online point | seed | true reward @ KL | judge score | ties | KL-budget stop | offline DPO (nearest KL) "
        "| iterative DPO (nearest KL) | iterative DPO (final round) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in online:
        kl = r["eval"]["kl_to_reference"]
        its = _same_seed(rounds, r)
        final = next((x for x in its if x.get("final")), None)
        near_it = _nearest_kl(its, kl)
        on = r.get("online") or {}
        stop = on.get("stopped_by_kl_budget")
        lines.append(
            f"| {param_label(r)} | {r.get('seed')} | {_at(r)} | {fmt_number(on.get('score_mean'))} | "
            f"{fmt_number(on.get('ties_mean'))} | {'step ' + str(stop['step']) if stop else '—'} | "
            f"{_at(_nearest_kl(_same_seed(offline, r), kl))} | "
            f"{_at(near_it)}{' (round ' + str(near_it['params']['round']) + ')' if near_it else ''} | {_at(final)} |"
        )
    groups: dict[str, list[dict]] = {}
    for r in online:
        groups.setdefault(param_label(r), []).append(r)
    if any(len(g) > 1 for g in groups.values()):
        lines += [
            "",
            "| online point | seeds | true reward (range) | KL | offline DPO reward | KL "
            "| iterative DPO final reward | KL |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, g in groups.items():
            seeds = {x.get("seed") for x in g}
            off = [x for x in offline if x.get("seed") in seeds]
            fin = [x for x in rounds if x.get("final") and x.get("seed") in seeds]
            lines.append(f"| {label} | {len(g)} | {_mean_at(g)} | {_mean_at(off)} | {_mean_at(fin)} |")
    lines += [
        "",
        "Judge score: the mean score the judge gave the replies sampled in training (after any length penalty); "
        "ties: the fraction of prompts whose k replies all scored alike (no pair). Offline and iterative DPO "
        "are the same seed's.",
    ]
    return lines
