"""Defended RLHF (docs/compare.md "Defended RLHF"): a weak reward model hacked by an aggressive RLOO, and the
same RLOO against a pessimistic ensemble of equally weak members (prefopt.studies.rlhf): ``ens4`` on
bootstrap resamples, ``ens4-disjoint`` on disjoint parts, ``ens4-full`` on all the pairs (the default split:
member 0 is the single model, the others its reruns with seeds + 1, + 2, + 3).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/rlhf_defences.py --variant single --seed 42 --out runs/rlhfdef
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/rlhf_defences.py --variant ens4 --seed 42 --out runs/rlhfdef

Writes ``<out>/<variant>-seed<seed>/result.json``: the reference's and the policy's sampled true reward, KL,
reward-model held-out accuracies and wall time. ``--set key=value`` overrides the rlhf section (dotted keys,
YAML values), ``--pairs`` the training pairs of the base recipe.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from prefopt.config.recipe import load_recipe
from prefopt.studies.measure import CompareEvaluation, WorldEvaluator
from prefopt.studies.rlhf import run_rlhf

BASE = Path(__file__).resolve().parents[1] / "configs/recipes/quickstart/dpo.yaml"

# The aggressive RLOO of docs/compare.md against a weak reward model (few pairs).
SECTION = {
    "reward_model": {"num_train_epochs": 1},
    "policy": {"beta": 0.01, "learning_rate": 3.0e-4, "max_steps": 300},
}
VARIANTS = {
    "single": {},
    "ens4": {"reward_model": {"ensemble": {"members": 4, "split": "bootstrap", "combine": "mean_minus_std"}}},
    "ens4-disjoint": {
        "reward_model": {"ensemble": {"members": 4, "split": "disjoint", "combine": "mean_minus_std"}}
    },
    "ens4-full": {"reward_model": {"ensemble": {"members": 4, "split": "full", "combine": "mean_minus_std"}}},
}


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--pairs", type=int, default=500, help="data.train.0.size of the base recipe")
    ap.add_argument("--out", default="runs/rlhf-defences")
    ap.add_argument("--num-prompts", type=int, default=300)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], help="rlhf section key=value (dotted, YAML value)")
    args = ap.parse_args()
    section = merge(SECTION, VARIANTS[args.variant])
    for item in args.set:
        key, _, value = item.partition("=")
        patch: dict = {}
        node = patch
        *head, last = key.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = yaml.safe_load(value)
        section = merge(section, patch)
    recipe = load_recipe(BASE, [f"data.train.0.size={args.pairs}", f"seed={args.seed}"])
    settings = CompareEvaluation(
        num_prompts=args.num_prompts, samples_per_prompt=args.samples, pref_prompts=300
    )
    evaluator = WorldEvaluator.for_task("arith", settings)
    policy = section.get("policy", {})
    tag = "".join(
        f"-{short}{policy[key]:g}"
        for key, short in (("length_penalty", "lp"), ("kl_budget", "kl"))
        if policy.get(key)
    )
    out = Path(args.out) / f"{args.variant}{tag}-seed{args.seed}"
    t0 = time.perf_counter()
    res = run_rlhf(section, recipe, output_dir=out, seed=args.seed, evaluate=evaluator)
    wall = time.perf_counter() - t0
    ref = evaluator.reference_result
    rows = []
    for p in res["points"]:
        e = p.get("eval") or {}
        rows.append(
            {
                "name": p["name"],
                "status": p["status"],
                "reward_sampled": e.get("reward_sampled"),
                "reward_greedy": e.get("reward_greedy"),
                "kl_to_reference": e.get("kl_to_reference"),
                "global_step": p.get("global_step"),
                "kl_budget": p.get("kl_budget"),
                "wall_s": p.get("wall_s"),
            }
        )
    rm = res["reward_model"]
    summary = {
        "variant": args.variant + tag,
        "seed": args.seed,
        "pairs": args.pairs,
        "section": section,
        "reference": {k: ref.get(k) for k in ("reward_sampled", "reward_greedy")},
        "reward_model_heldout_accuracy": rm.get("heldout_accuracy"),
        "member_heldout_accuracy": rm.get("member_heldout_accuracy"),
        "reward_model_wall_s": rm.get("wall_s"),
        "points": rows,
        "wall_s": round(wall, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
