"""frontier.png: true reward (sampled and greedy) against KL to the reference, one marker per algorithm."""

from __future__ import annotations

from pathlib import Path

from prefopt.config.algorithms import ALGORITHMS
from prefopt.studies.compare.sweep import MAIN_PARAM, SYMBOLS, fmt_param
from prefopt.studies.compare.tables import sorted_rows


def plot_frontier(summary: dict, path: Path) -> Path:
    """True reward (sampled and greedy) against KL to the reference, one marker/colour per algorithm,
    the swept parameter annotated; iterative DPO's rounds joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = plot_styles()
    rows = [r for r in sorted_rows(summary) if r.get("status") == "finished" and r.get("eval")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, metric, title in (
        (axes[0], "reward_sampled", "true reward, sampled (T = 1)"),
        (axes[1], "reward_greedy", "true reward, greedy"),
    ):
        by_alg: dict[str, list[dict]] = {}
        for r in rows:  # a defended RLHF (variant "rlhf-ens4", ...) is its own series
            by_alg.setdefault(r.get("variant") or r["algorithm"], []).append(r)
        for alg, rs in by_alg.items():
            color, marker = styles.get(alg) or variant_style(alg, rs[0]["algorithm"], styles)
            xs = [r["eval"].get("kl_to_reference", 0.0) for r in rs]
            ys = [r["eval"][metric] for r in rs]
            ax.scatter(
                xs,
                ys,
                c=color,
                marker=marker,
                s=90 if alg == "reference" else 55,
                label=alg,
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
            if alg == "iterative_dpo":
                order = sorted(
                    range(len(rs)), key=lambda i: (rs[i].get("seed") or 0, rs[i]["params"].get("round", 0))
                )
                ax.plot([xs[i] for i in order], [ys[i] for i in order], c=color, lw=1, zorder=2)
            offsets = ((5, 4), (5, -9), (-8, 8))  # neighbours of one algorithm often sit close together
            for i, (r, x, y) in enumerate(zip(rs, xs, ys)):
                label = _short_label(r)
                if label:
                    ax.annotate(
                        label,
                        (x, y),
                        textcoords="offset points",
                        xytext=offsets[i % len(offsets)],
                        fontsize=7,
                        color=color if alg != "reference" else "black",
                    )
        # symlog: readable near the reference (KL ≈ 0, estimates can be slightly negative) and far out
        ax.set_xscale("symlog", linthresh=0.1, linscale=0.5)
        ax.set_xlabel("KL(π ‖ π_ref) on samples (nats / sequence, symlog)")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"prefopt compare — world:{summary['task']} (held-out prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


PALETTE = (
    ("tab:blue", "o"),
    ("tab:orange", "s"),
    ("tab:green", "^"),
    ("tab:red", "D"),
    ("tab:purple", "v"),
    ("tab:pink", "<"),
    ("tab:olive", ">"),
    ("tab:gray", "h"),
)


STUDY_STYLES = {"rlhf": ("tab:brown", "P"), "iterative_dpo": ("tab:cyan", "X")}


def plot_styles() -> dict[str, tuple[str, str]]:
    """(colour, marker) per row kind: the reference, each algorithm in table order, the side studies."""
    styles = {"reference": ("black", "*")}
    styles.update({name: PALETTE[i % len(PALETTE)] for i, name in enumerate(ALGORITHMS)})
    styles.update(STUDY_STYLES)
    return styles


VARIANT_STYLES = (("darkred", "p"), ("darkgreen", "H"), ("navy", "8"), ("goldenrod", "d"))


def variant_style(variant: str, algorithm: str, styles: dict) -> tuple[str, str]:
    """A study variant (defended RLHF) the same every time, distinct from its plain study's style."""
    if variant == algorithm:
        return styles.get(algorithm, ("gray", "o"))
    return VARIANT_STYLES[sum(map(ord, variant)) % len(VARIANT_STYLES)]


def _short_label(r: dict) -> str:
    params = r.get("params") or {}
    if r["algorithm"] == "iterative_dpo" and "round" in params:
        return f"r{params['round']}"
    if r["algorithm"] == "reference":
        return "ref"
    main = MAIN_PARAM.get(r["algorithm"])
    if not (main and main in params):
        main = "beta" if "beta" in params else None
    label = f"{SYMBOLS.get(main, main)}={fmt_param(params[main])}" if main else ""
    # the entry's other swept parameters (e.g. online DPO's k and epochs), so neighbours can be told apart
    rest = [f"{SHORT.get(k, SYMBOLS.get(k, k))}={fmt_param(v)}" for k, v in params.items() if k != main]
    return " ".join([label, *rest]).strip()


SHORT = {"num_train_epochs": "ep", "learning_rate": "lr", "k": "k"}
"""Shorter names of swept parameters in the frontier's point labels."""
