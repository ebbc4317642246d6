"""Overhead: one prefopt DPO run vs a plain TRL script with the identical model, data, batch and steps.

* **plain TRL** — ``AutoModelForCausalLM.from_pretrained`` of the builtin small-25m weights (saved once
  from ``prefopt.model.loading.build_builtin("small-25m", 0)``), ``load_dataset("json")`` of the text pairs,
  ``trl.DPOTrainer`` (it tokenises the text and loads its own reference copy), ``train()``. No prefopt
  code runs in that process.
* **prefopt** — ``prefopt.pipeline.run.train(recipe)``: the same pairs through the ``jsonl`` reader, prefopt's
  tokenisation, the same weights built in memory, the same TRL config values (fp32, no gradient
  checkpointing, lr, batch, steps), metrics.jsonl and manifest. Evaluation and model saving are off on
  both sides. Measured twice: as shipped (batches drawn at random as TRL's; the split forward on, so
  fewer padding slots are computed) and with the split forward off (``prefopt-off``: exactly TRL's work,
  so the ratio is what the rest of prefopt costs — the fixed costs of data report, manifest, plots).

Each run is a fresh interpreter with ``OMP_NUM_THREADS=1``; the timed region starts after imports and
ends when ``train`` returns. Runs alternate (ABBA), ``--reps`` each (default 5); the ratio is the median
of the per-round ratios. Target: prefopt / TRL ≤ 1.02.

    python benchmarks/overhead.py [--reps 5] [--pairs 16] [--batch 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TARGET = 1.02


def worker(args) -> dict:
    common.pin_threads(1)
    out = Path(args.out)
    if args.worker == "trl":
        import datasets
        from datasets import load_dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOTrainer

        datasets.disable_progress_bars()
        t0, c0 = time.perf_counter(), common.cpu_seconds()
        model = AutoModelForCausalLM.from_pretrained(args.model_dir)
        tok = AutoTokenizer.from_pretrained(args.model_dir)
        ds = load_dataset("json", data_files=args.data, split="train")
        cfg = common.trl_dpo_config(out, batch=args.batch, steps=args.steps, max_length=args.max_length)
        trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
        timer = common.step_timer()
        trainer.add_callback(timer)
        t1 = time.perf_counter()
        trainer.train()
        t2, c2 = time.perf_counter(), common.cpu_seconds()
        return {
            "total_s": t2 - t0,
            "cpu_s": c2 - c0,
            "train_s": t2 - t1,
            "step_cpu_s": common.median(timer.cpu),
            "steps": trainer.state.global_step,
        }
    import datasets

    import prefopt.pipeline.run as train_mod

    datasets.disable_progress_bars()
    if args.worker == "prefopt-off":
        common.batching_off()
    recipe = common.prefopt_recipe(
        Path(args.data), out, batch=args.batch, steps=args.steps, max_length=args.max_length
    )
    timing = {}
    timer = common.step_timer()
    build = train_mod.build_trainer

    def timed_build(*a, **k):  # instrumentation: time the training loop alone as well
        trainer = build(*a, **k)
        trainer.add_callback(timer)
        inner = trainer.train

        def train(*ta, **tk):
            timing["t1"] = time.perf_counter()
            r = inner(*ta, **tk)
            timing["t2"] = time.perf_counter()
            return r

        trainer.train = train
        return trainer

    train_mod.build_trainer = timed_build
    t0, c0 = time.perf_counter(), common.cpu_seconds()
    summary = train_mod.train(recipe, output_dir=str(out), overwrite=True)
    t3, c3 = time.perf_counter(), common.cpu_seconds()
    return {
        "total_s": t3 - t0,
        "cpu_s": c3 - c0,
        "train_s": timing["t2"] - timing["t1"],
        "step_cpu_s": common.median(timer.cpu),
        "steps": summary["global_step"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--scale", type=float, default=0.05, help="UltraFeedback lengths × this")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 2 steps")
    ap.add_argument("--worker", choices=("trl", "prefopt", "prefopt-off"))
    ap.add_argument("--data"), ap.add_argument("--model-dir"), ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.quick:
        args.reps, args.steps = min(args.reps, 3), min(args.steps, 2)

    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    data = common.write_jsonl(common.text_pairs(args.pairs, seed=0, scale=args.scale), tmp / "pairs.jsonl")
    mdir = common.model_dir(tmp)
    base = [
        "--data",
        str(data),
        "--model-dir",
        str(mdir),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--max-length",
        str(args.max_length),
    ]
    env = common.worker_env(
        PREFOPT_CACHE=str(tmp / "prefopt-cache"), HF_DATASETS_CACHE=str(tmp / "hf-datasets")
    )
    me = Path(__file__)

    def run(kind, i):
        return lambda: common.run_worker(
            me, ["--worker", kind, "--out", str(tmp / f"{kind}-{i}"), *base], env
        )

    print(
        f"overhead: DPO, builtin:{common.MODEL}, {args.pairs} pairs, batch {args.batch}, {args.steps} steps, "
        f"{args.reps} rounds; machine {common.machine()}",
        flush=True,
    )
    results: dict[str, list] = {"trl": [], "prefopt": [], "prefopt-off": []}
    for i in range(args.reps):
        order = ["trl", "prefopt", "prefopt-off"] if i % 2 == 0 else ["prefopt-off", "prefopt", "trl"]
        for kind in order:
            r = run(kind, i)()
            results[kind].append(r)
            print(
                f"  round {i + 1}/{args.reps} {kind:12s} total {r['total_s']:6.1f}s wall {r['cpu_s']:6.1f}s cpu"
                f"  median step {r['step_cpu_s']:5.2f}s cpu  steps {r['steps']}",
                flush=True,
            )

    def ratios(kind, field):
        return [a[field] / b[field] for a, b in zip(results[kind], results["trl"])]

    fields = ("cpu_s", "total_s", "step_cpu_s")
    table = {
        f"{kind}/{field}": common.median(ratios(kind, field))
        for kind in ("prefopt", "prefopt-off")
        for field in fields
    }
    print(f"\n{'':30s} {'median':>9s} {'ratio to TRL (median of rounds)':>32s}")
    for kind in ("trl", "prefopt", "prefopt-off"):
        for field in fields:
            med = common.median([r[field] for r in results[kind]])
            rt = "" if kind == "trl" else f"{table[f'{kind}/{field}']:.3f}"
            print(f"{kind + ' ' + field:30s} {med:9.2f} {rt:>32s}")
    common.report(
        "overhead",
        table["prefopt/cpu_s"],
        TARGET,
        {
            "measure": "CPU seconds of the whole run (fresh process, after imports)",
            "prefopt_wall": round(table["prefopt/total_s"], 4),
            "prefopt_step": round(table["prefopt/step_cpu_s"], 4),
            "prefopt_batching_off_cpu": round(table["prefopt-off/cpu_s"], 4),
            "prefopt_batching_off_wall": round(table["prefopt-off/total_s"], 4),
            "prefopt_batching_off_step": round(table["prefopt-off/step_cpu_s"], 4),
            "trl_cpu_s_median": round(common.median([r["cpu_s"] for r in results["trl"]]), 2),
            "reps": args.reps,
            "pairs": args.pairs,
            "batch": args.batch,
            "steps": args.steps,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
