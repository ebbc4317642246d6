"""Memory: peak RSS of a LoRA DPO run vs a LoRA SFT run on the same model and the same tokens.

With LoRA the DPO reference is the base model with the adapter disabled, so no second copy of the
weights should exist: DPO's peak should be SFT's.

* **prefopt LoRA DPO** — ``prefopt.pipeline.run.train(recipe)`` with ``model.lora`` (r 16, all linear layers),
  builtin small-25m, on-the-fly reference (the adapter-disabled base; no reference cache), as shipped.
* **TRL LoRA SFT** — ``trl.SFTTrainer`` with the same ``peft.LoraConfig`` on the same model weights and
  the 2B sequences (prompt + chosen, prompt + rejected) of the same pairs, 2B sequences per step, tokenised
  by prefopt (the same ids).

Both sides take the pairs in file order (``train_sampling_strategy: sequential``), so step k of DPO and
step k of SFT hold the same tokens (length grouping would put the longest pairs first, SFT's random
sampler would not, and the peak follows the longest batch).

Each run is a fresh interpreter (``OMP_NUM_THREADS=1``) that first imports the same modules (torch,
transformers, trl, peft, prefopt.pipeline.run), then records its RSS (``baseline``), runs ``--steps`` steps and
reports its peak RSS (``ru_maxrss``). Runs alternate (ABBA), ``--reps`` each (default 5); the ratio is
the median of the per-round ratios of peak RSS. Target ≤ 1.10. (``--lora none`` compares full fine-tuning
instead, where DPO does hold a reference copy.)

    python benchmarks/memory.py [--reps 5] [--steps 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TARGET = 1.10
LORA = {"r": 16, "lora_alpha": 32}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> dict:
    common.pin_threads(1)
    # the same imports on both sides, before the baseline
    import datasets
    import matplotlib  # noqa: F401 - prefopt's report imports it
    import peft  # noqa: F401
    import torch  # noqa: F401
    import trl  # noqa: F401
    from datasets import Dataset
    from trl import SFTTrainer

    import prefopt.pipeline.run as train_mod
    from prefopt.config.recipe import ModelSection
    from prefopt.data.fast_tokenize import tokenize_dataset_fast
    from prefopt.data.report import DropReport
    from prefopt.model.loading import apply_lora, build_builtin, load_tokenizer

    datasets.disable_progress_bars()
    lora = None if args.lora == "none" else LORA
    base = rss_mb()
    out = Path(args.out)
    if args.worker == "dpo":
        recipe = common.prefopt_recipe(
            Path(args.data),
            out,
            batch=args.batch,
            steps=args.steps,
            max_length=args.max_length,
            lora=lora,
            training={"train_sampling_strategy": "sequential"},
        )
        train_mod.train(recipe, output_dir=str(out), overwrite=True)
    else:
        tok = load_tokenizer(f"builtin:{common.MODEL}")
        pairs = [json.loads(x) for x in Path(args.data).read_text().splitlines()]
        tok_ds, _ = tokenize_dataset_fast(
            Dataset.from_list(pairs),
            "paired",
            tok,
            max_length=args.max_length,
            report=DropReport(),
            num_proc=1,
        )
        rows = []  # batch k = [chosen of pairs kB..kB+B-1, rejected of the same pairs]: DPO's (2B, L) batch
        for k in range(0, len(tok_ds), args.batch):
            group = [tok_ds[i] for i in range(k, min(k + args.batch, len(tok_ds)))]
            rows += [
                {
                    "input_ids": r["prompt_ids"] + r[s],
                    "completion_mask": [0] * len(r["prompt_ids"]) + [1] * len(r[s]),
                }
                for s in ("chosen_ids", "rejected_ids")
                for r in group
            ]
        model = build_builtin(common.MODEL, common.SEED)
        if lora:
            model = apply_lora(model, ModelSection(name=f"builtin:{common.MODEL}", lora=lora))
        cfg = common.trl_sft_config(
            out,
            batch_pairs=args.batch,
            max_length=args.max_length,
            max_steps=args.steps,
            logging_steps=1,
            lr_scheduler_type="constant",
            train_sampling_strategy="sequential",
        )
        SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok).train()
    return {"peak_mb": peak_mb(), "baseline_mb": base}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step (SFT: twice as many sequences)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--lora", choices=("r16", "none"), default="r16")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 1 step")
    ap.add_argument("--worker", choices=("dpo", "sft"))
    ap.add_argument("--data"), ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.quick:
        args.reps, args.steps = min(args.reps, 2), 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    data = common.write_jsonl(common.text_pairs(args.pairs, seed=3, scale=args.scale), tmp / "pairs.jsonl")
    base = [
        "--data",
        str(data),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--max-length",
        str(args.max_length),
        "--lora",
        args.lora,
    ]
    env = common.worker_env(PREFOPT_CACHE=str(tmp / "prefopt-cache"))
    me = Path(__file__)
    print(
        f"memory: {'LoRA r16' if args.lora != 'none' else 'full fine-tuning'} DPO vs SFT, builtin:{common.MODEL}, "
        f"{args.batch} pairs per step, {args.steps} steps, {args.reps} rounds; machine {common.machine()}",
        flush=True,
    )
    results: dict[str, list] = {"dpo": [], "sft": []}
    for i in range(args.reps):
        for kind in ("dpo", "sft") if i % 2 == 0 else ("sft", "dpo"):
            r = common.run_worker(me, ["--worker", kind, "--out", str(tmp / f"{kind}-{i}"), *base], env)
            results[kind].append(r)
            print(
                f"  round {i + 1}/{args.reps} {kind}: peak {r['peak_mb']:.0f} MB (baseline after imports "
                f"{r['baseline_mb']:.0f} MB, +{r['peak_mb'] - r['baseline_mb']:.0f} MB)",
                flush=True,
            )
    ratio = common.median([a["peak_mb"] / b["peak_mb"] for a, b in zip(results["dpo"], results["sft"])])
    growth = common.median(
        [
            (a["peak_mb"] - a["baseline_mb"]) / (b["peak_mb"] - b["baseline_mb"])
            for a, b in zip(results["dpo"], results["sft"])
        ]
    )
    for k in ("dpo", "sft"):
        print(
            f"{k}: median peak {common.median([r['peak_mb'] for r in results[k]]):.0f} MB, "
            f"median growth over baseline {common.median([r['peak_mb'] - r['baseline_mb'] for r in results[k]]):.0f} MB"
        )
    print(f"growth over the post-import baseline, DPO / SFT: {growth:.3f}")
    common.report(
        "memory",
        ratio,
        TARGET,
        {
            "measure": "peak RSS (ru_maxrss) of the whole process",
            "growth_ratio": round(growth, 4),
            "lora": args.lora,
            "reps": args.reps,
            "steps": args.steps,
            "dpo_peak_mb": round(common.median([r["peak_mb"] for r in results["dpo"]]), 1),
            "sft_peak_mb": round(common.median([r["peak_mb"] for r in results["sft"]]), 1),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
