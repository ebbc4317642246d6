"""``prefopt report RUN_DIR``: a markdown report with PNG plots of one run.

Reads ``metrics.jsonl`` (TRL's logged metrics, health warnings and probe records), and when present
``eval.json``, ``manifest.json``, ``data_report.json`` and ``resolved.yaml``; writes ``report.md`` and
one PNG per plot into the run directory (matplotlib, Agg backend). A plot whose metrics were not
logged is skipped and the report says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from prefopt.config.algorithms import spec_or_none
from prefopt.core.errors import PrefoptError
from prefopt.evaluate.judged_report import report_lines as judged_report_lines
from prefopt.evaluate.kl import kl_figures

# (file, title, y label, [(metric key, legend label)]). Keys are TRL's names, plus kl_proxy (derived
# here) and the health probe's mean_length / reference_mean_length / kl_sampled.
PLOTS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    ("loss.png", "Training loss", "loss", [("loss", "train loss"), ("eval_loss", "eval loss")]),
    (
        "rewards.png",
        "Implicit rewards and margin",
        "implicit reward",
        [
            ("rewards/chosen", "chosen"),
            ("rewards/rejected", "rejected"),
            ("rewards/margins", "margin (chosen − rejected)"),
        ],
    ),
    (
        "accuracies.png",
        "Reward accuracy (chosen reward > rejected reward)",
        "accuracy",
        [("rewards/accuracies", "train"), ("eval_rewards/accuracies", "eval")],
    ),
    (
        "logps.png",
        "Policy log-probs of the training replies",
        "log-prob",
        [("logps/chosen", "chosen"), ("logps/rejected", "rejected")],
    ),
    (
        "kl.png",
        "KL(policy ‖ reference)",
        "nats / sequence",
        [
            ("kl", "KTO batch KL (logged)"),
            ("kl_proxy", "|rewards/chosen + rewards/rejected| / 2β (proxy)"),
            ("kl_sampled", "sampled (health probe)"),
        ],
    ),
    (
        "lengths.png",
        "Mean sampled completion length (health probe)",
        "tokens",
        [("mean_length", "policy"), ("reference_mean_length", "reference (start)")],
    ),
]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def read_metrics(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """``metrics.jsonl`` → (training log records, health warnings, probe records)."""
    logs, health, probes = [], [], []
    if not path.exists():
        return logs, health, probes
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        event = rec.get("event")
        if event == "health":
            health.append(rec)
        elif event == "probe":
            probes.append(rec)
        elif event is None:
            logs.append(rec)
    return logs, health, probes


def _float(v) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)  # "nan"/"inf" strings (metrics.jsonl writes non-finite values as strings) too
    except (TypeError, ValueError):
        return None


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _recipe_info(run_dir: Path) -> dict:
    try:
        import yaml

        return yaml.safe_load((run_dir / "resolved.yaml").read_text()) or {}
    except (OSError, ValueError, ImportError):
        return {}


def _beta(recipe: dict) -> float | None:
    """β of a reference-based loss (τ for IPO) from resolved.yaml, the schema's default when absent."""
    spec = spec_or_none(recipe.get("algorithm"))
    if spec is None or not spec.uses_reference:
        return None
    loss = recipe.get("loss") or {}
    return _float(loss.get(spec.scale_param, spec.loss.model_fields[spec.scale_param].default))


def series(logs: list[dict], probes: list[dict], recipe: dict) -> dict[str, list[tuple[float, float]]]:
    """metric name → [(step, value)], finite values only; derived: kl_proxy (DPO/IPO), probe metrics."""
    out: dict[str, list[tuple[float, float]]] = {}
    for rec in logs:
        step = _float(rec.get("step"))
        if step is None:
            continue
        for k, v in rec.items():
            if k in ("step", "epoch"):
                continue
            f = _float(v)
            if f is not None and math.isfinite(f):
                out.setdefault(k, []).append((step, f))
    beta = _beta(recipe)
    spec = spec_or_none(recipe.get("algorithm"))
    if spec is not None and spec.rewards_kl_proxy and beta:
        rc = dict(out.get("rewards/chosen", []))
        rr = dict(out.get("rewards/rejected", []))
        proxy = [(s, abs(rc[s] + rr[s]) / (2 * beta)) for s in rc if s in rr]
        if proxy:
            out["kl_proxy"] = proxy
    for rec in probes:
        step = _float(rec.get("step"))
        for k in ("mean_length", "reference_mean_length", "kl_sampled"):
            f = _float(rec.get(k))
            if step is not None and f is not None and math.isfinite(f):
                out.setdefault(k, []).append((step, f))
    return out


def _plot(
    path: Path,
    title: str,
    ylabel: str,
    lines: list[tuple[str, list[tuple[float, float]]]],
    warnings: list[dict],
    subtitle: str | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=120)
    for i, (label, pts) in enumerate(lines):
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        style = dict(color=COLORS[i % len(COLORS)], linewidth=1.8, label=label)
        if "reference" in label:
            style.update(color="#555555", linestyle="--")
        if len(pts) <= 30:
            style.update(marker="o", markersize=3.5)
        ax.plot(xs, ys, **style)
    if "margin" in " ".join(label for label, _ in lines) or ylabel.endswith(" reward"):
        ax.axhline(0.0, color="#888888", linewidth=0.8, linestyle=":")
    shown = set()
    for w in warnings:
        step = _float(w.get("step"))
        if step is None:
            continue
        wid = str(w.get("warning"))
        ax.axvline(
            step,
            color="#e377c2",
            linewidth=1.0,
            linestyle="--",
            alpha=0.8,
            label=None if wid in shown else f"health: {wid}",
        )
        shown.add(wid)
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.85)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def _eval_section(ev: dict) -> list[str]:
    lines = ["## Evaluation", ""]
    pref = ev.get("preference") or {}
    samp = ev.get("sampling") or {}
    world = ev.get("world") or {}
    rows = []
    if pref:
        rows += [
            (
                "held-out preference accuracy (implicit reward)",
                pref.get("accuracy"),
                pref.get("reference_accuracy"),
            ),
            ("mean reward margin", pref.get("reward_margin"), None),
            ("log-prob shift, chosen (policy − reference)", pref.get("logp_shift_chosen"), None),
            ("log-prob shift, rejected (policy − reference)", pref.get("logp_shift_rejected"), None),
            ("mean log-prob, chosen", pref.get("logp_chosen"), pref.get("reference_logp_chosen")),
            ("mean log-prob, rejected", pref.get("logp_rejected"), pref.get("reference_logp_rejected")),
        ]
    if samp:
        rows += [
            (
                "mean sampled completion length, tokens",
                samp.get("mean_length"),
                samp.get("reference_mean_length"),
            ),
        ]
    if world:
        pol, ref = world.get("policy") or {}, world.get("reference") or {}
        rows += [
            (
                f"true reward, sampled ({pol.get('task', 'world')})",
                pol.get("reward_sampled"),
                ref.get("reward_sampled"),
            ),
            ("true reward, greedy", pol.get("reward_greedy"), ref.get("reward_greedy")),
        ]
    if pref.get("perplexity_chosen") is not None:
        rows.append(
            (
                "perplexity of held-out chosen replies",
                pref["perplexity_chosen"],
                pref.get("reference_perplexity_chosen"),
            )
        )
    rows += [(f"KL(policy ‖ reference), nats, on {f['samples']}", f["value"], None) for f in kl_figures(ev)]
    if not rows:
        return lines + ["eval.json holds no metrics.", ""]
    lines += ["| metric | policy | reference |", "|---|---:|---:|"]
    lines += [f"| {name} | {_fmt(p)} | {_fmt(r)} |" for name, p, r in rows]
    lines.append("")
    if world:
        lines.append(
            f"- True-reward lift: sampled {_fmt(world.get('lift_sampled'))}, greedy {_fmt(world.get('lift_greedy'))}."
        )
    if pref:
        lines.append(
            f"- Preference pairs: {_fmt(pref.get('num_pairs'))} from {pref.get('source') or 'held-out data'}; "
            f"implicit reward = {pref.get('reward_definition', ev.get('reward_definition', '?'))}; "
            f"reference accuracy: {pref.get('reference_accuracy_definition', '?')}."
        )
    if samp:
        lines.append(
            f"- Sampling: {_fmt(samp.get('num_prompts'))} prompts × {_fmt(samp.get('samples_per_prompt'))} "
            f"at temperature {_fmt(samp.get('temperature'))}, at most {_fmt(samp.get('max_new_tokens'))} new tokens."
        )
    for note in ev.get("notes") or []:
        lines.append(f"- Note: {note}.")
    lines.append("")
    return lines + judged_report_lines(ev)


def _health_section(warnings: list[dict]) -> list[str]:
    lines = ["## Health warnings", ""]
    if not warnings:
        return lines + ["None (see docs/health.md for what is watched).", ""]
    lines += ["| step | warning | numbers | advice |", "|---:|---|---|---|"]
    skip = {"event", "warning", "step", "advice"}
    for w in warnings:
        nums = ", ".join(f"{k} = {_fmt(v)}" for k, v in w.items() if k not in skip)
        lines.append(f"| {_fmt(w.get('step'))} | `{w.get('warning')}` | {nums} | {_fmt(w.get('advice'))} |")
    lines.append("")
    return lines


def _run_section(manifest: dict | None, recipe: dict) -> list[str]:
    lines = ["## Run", ""]
    if manifest is None and not recipe:
        return lines + ["No manifest.json or resolved.yaml (an unfinished run?).", ""]
    m = manifest or {}
    rows = [
        ("status", m.get("status", "not finished (no manifest.json)")),
        ("algorithm", m.get("algorithm", recipe.get("algorithm"))),
        ("trainer", m.get("trainer")),
        ("model", (recipe.get("model") or {}).get("name")),
        ("loss", json.dumps(recipe.get("loss") or {})),
        ("seed", m.get("seed", recipe.get("seed"))),
        ("optimizer steps", m.get("global_step")),
        ("train loss", m.get("train_loss")),
        ("runtime (s)", m.get("train_runtime_s")),
        (
            "train / eval rows",
            "{} / {}".format(*[(m.get("data") or {}).get(k) for k in ("train_rows", "eval_rows")])
            if m.get("data")
            else None,
        ),
        ("processes", m.get("world_size")),
        ("git commit", m.get("git_commit")),
        ("versions", ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items() if v)),
    ]
    lines += ["| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows if v not in (None, "")]
    for o in m.get("prefopt_overrides") or []:
        lines.append(f"| prefopt override | {_fmt(o)} |")
    lines.append("")
    return lines


def _data_section(dr: dict | None) -> list[str]:
    if not dr:
        return []
    lines = [
        "## Data",
        "",
        f"{_fmt(dr.get('rows_in'))} rows read → {_fmt(dr.get('rows_out'))} kept, "
        f"{_fmt(dr.get('dropped'))} dropped.",
        "",
    ]
    if dr.get("drops"):
        lines += ["| dropped because | rows |", "|---|---:|"]
        lines += [f"| {_fmt(k)} | {_fmt(v)} |" for k, v in dr["drops"].items()]
        lines.append("")
    trunc = {k: v for k, v in (dr.get("truncation") or {}).items() if v}
    if trunc:
        lines.append("Truncation: " + ", ".join(f"{k} {_fmt(v)}" for k, v in trunc.items()) + ".")
        lines.append("")
    for note in dr.get("notes") or []:
        lines.append(f"- Note: {note}.")
    return lines + [""]


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and its PNG plots into ``run_dir``; returns the path of report.md."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PrefoptError(f"run directory {run_dir} does not exist.", where="prefopt report")
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.exists() and not (run_dir / "eval.json").exists():
        raise PrefoptError(
            f"{run_dir} holds neither metrics.jsonl nor eval.json: nothing to report.",
            where="prefopt report",
            fix="pass the directory `prefopt train` wrote.",
        )
    logs, warnings, probes = read_metrics(metrics_path)
    recipe = _recipe_info(run_dir)
    manifest = _load_json(run_dir / "manifest.json")
    ev = _load_json(run_dir / "eval.json")
    data_report = _load_json(run_dir / "data_report.json")
    data = series(logs, probes, recipe)
    algorithm = recipe.get("algorithm") or (manifest or {}).get("algorithm") or "?"

    md = [
        f"# prefopt report: {run_dir.name}",
        "",
        f"Algorithm **{algorithm}**, run directory `{run_dir}`. Plots mark health warnings as dashed lines.",
        "",
    ]
    md += _run_section(manifest, recipe)
    if ev:
        md += _eval_section(ev)
    md += _health_section(warnings)

    md += ["## Training curves", ""]
    skipped = []
    for fname, title, ylabel, keys in PLOTS:
        lines = [(label, data[k]) for k, label in keys if data.get(k)]
        if not lines:
            wanted = ", ".join(f"`{k}`" for k, _ in keys)
            skipped.append(
                f"- `{fname}` ({title}) not plotted: none of {wanted} was logged"
                + (" (the length probe is off: `health.probe_every: 0`)" if fname == "lengths.png" else "")
                + "."
            )
            (run_dir / fname).unlink(missing_ok=True)
            continue
        subtitle = None
        spec = spec_or_none(algorithm)
        if fname == "logps.png" and spec is not None and spec.averaged_logps:
            subtitle = f"{algorithm}: TRL logs per-token average log-probs"
            ylabel = "mean log-prob per token"
        elif fname == "logps.png":
            ylabel = "summed log-prob per sequence"
        _plot(run_dir / fname, title, ylabel, lines, warnings, subtitle)
        md += [f"### {title}", "", f"![{title}]({fname})", ""]
    if skipped:
        md += ["Not plotted:", "", *skipped, ""]
    md += _data_section(data_report)
    out = run_dir / "report.md"
    out.write_text("\n".join(md).rstrip() + "\n")
    return out
