"""Iterative DPO's defences (docs/compare.md, "Iterative DPO"): the KL budget on arith, and the length
penalty against a judge that pays for length on the count world, each beside the same study without it.

    python benchmarks/iterative_defences.py [--workdir DIR] [--seed 42]

Each study is a `prefopt compare` sweep with only an `iterative_dpo:` section (prefopt.studies.compare.run_sweep),
written under ``--workdir/<name>``; finished studies are reused on a rerun. Prints one markdown row per round:
true reward (sampled, greedy), mean reply length, KL to the starting model, the defences, and why it stopped.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from prefopt.studies.compare import load_sweep, run_sweep

REPO = Path(__file__).resolve().parents[1]
DPO = str(REPO / "configs" / "recipes" / "quickstart" / "dpo.yaml")
EVAL = {"num_prompts": 400, "samples_per_prompt": 6, "pref_prompts": 357}
ITER = {"rounds": 3, "prompts_per_round": 1000, "samples_per_prompt": 4, "reference": "previous"}
# count: "count a 7:" → "aaaaaaa"; the judge is the true reward plus 1 per reply character
COUNT = ["model.name=world:count", "data.train.0.task=count", "training.max_length=48"]
LONG = {
    "type": "callable",
    "function": "prefopt.judge.length:length_biased_reward",
    "kwargs": {"function": "prefopt.world:TASKS.count.reward", "bonus": 1.0},
}
STUDIES = {
    "arith-plain": ([], {}, EVAL),
    "arith-kl_budget0.2": ([], {"kl_budget": 0.2}, EVAL),
    "count-length_biased": (COUNT, {"judge": LONG, "max_new_tokens": 24}, {**EVAL, "max_new_tokens": 24}),
    "count-length_biased-penalty1": (
        COUNT,
        {"judge": LONG, "max_new_tokens": 24, "length_penalty": 1.0},
        {**EVAL, "max_new_tokens": 24},
    ),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(REPO / "runs" / "iterative_defences"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = [
        "| study | round | true reward (sampled) | greedy | mean length | KL | wall s (cumulative) | stopped |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.only:
        overrides, section, evaluation = STUDIES[name]
        sweep = load_sweep(
            data={
                "base": DPO,
                "seeds": [args.seed],
                "overrides": overrides,
                "evaluation": evaluation,
                "iterative_dpo": {**ITER, **section},
            }
        )
        summary = run_sweep(sweep, output_dir=Path(args.workdir) / name)
        ref = summary["reference"]["eval"]
        rows.append(
            f"| {name} | reference | {ref['reward_sampled']:.3f} | {ref['reward_greedy']:.3f} | "
            f"{ref.get('mean_length', float('nan')):.2f} | 0 | | |"
        )
        for p in summary["points"]:
            e = p.get("eval") or {}
            stop = p.get("stopped")
            why = f"after round {stop['round']}: KL {stop['kl']:.3f} > {stop['kl_budget']:g}" if stop else "—"
            rows.append(
                f"| {name} | {p['params'].get('round')} | {e.get('reward_sampled', float('nan')):.3f} | "
                f"{e.get('reward_greedy', float('nan')):.3f} | {e.get('mean_length', float('nan')):.2f} | "
                f"{e.get('kl_to_reference', float('nan')):.3f} | {p.get('cumulative_wall_s')} | "
                f"{why} |"
            )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
