"""Sweep: a 4-point β sweep of DPO with prefopt's reference cache vs 4 plain TRL runs with TRL's own
``precompute_ref_log_probs=True`` (no reference copy in memory; the strongest plain set-up).

One round = one whole sweep (β = 0.05, 0.1, 0.2, 0.5; one epoch over the same pairs each) in a fresh
interpreter with ``OMP_NUM_THREADS=1``:

* **prefopt** — ``prefopt.pipeline.run.train(recipe)`` per β with ``reference_cache: {enabled: true}`` and a
  cache directory that is empty at the start of the round: run 1 computes and stores the reference
  log-probs, runs 2–4 read them. The split forward is on (prefopt's default); batches are drawn at
  random, as TRL's.
* **TRL** — ``load_dataset("json")`` of the text pairs (an empty ``HF_DATASETS_CACHE`` at the start of
  the round), ``trl.DPOTrainer`` per β with ``precompute_ref_log_probs=True``. TRL 1.16 does keep its
  precomputed log-probs next to the dataset's cache files and reuses them, but its key is the
  tokenised dataset's fingerprint, which hashes the whole config (through the closure of a ``filter`` in
  ``_prepare_dataset``) — β included — so only an identical rerun reuses them; every point of a sweep
  recomputes. With ``--with-in-memory`` also **TRL, in-memory data** (``Dataset.from_list``), which
  never reuses.

Rounds alternate (AB, BA, …), ``--reps`` each (default 5). The ratio is the median of the per-round
ratios prefopt / TRL, in CPU seconds (wall seconds are printed too). Target ≤ 0.80.

    python benchmarks/sweep.py [--reps 5] [--pairs 16] [--batch 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TARGET = 0.80
BETAS = (0.05, 0.1, 0.2, 0.5)


def worker(args) -> dict:
    common.pin_threads(1)
    import datasets

    datasets.disable_progress_bars()
    out = Path(args.out)
    betas = [float(b) for b in args.betas.split(",")]
    runs = []
    if args.worker.startswith("trl"):
        from datasets import Dataset, load_dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOTrainer

        t0, c0 = time.perf_counter(), common.cpu_seconds()
        for beta in betas:
            r0, rc0 = time.perf_counter(), common.cpu_seconds()
            model = AutoModelForCausalLM.from_pretrained(args.model_dir)
            tok = AutoTokenizer.from_pretrained(args.model_dir)
            if args.worker == "trl-file":
                ds = load_dataset("json", data_files=args.data, split="train")
            else:
                ds = Dataset.from_list([json.loads(x) for x in Path(args.data).read_text().splitlines()])
            cfg = common.trl_dpo_config(
                out / f"beta{beta}",
                batch=args.batch,
                epochs=1,
                max_length=args.max_length,
                beta=beta,
                precompute=True,
            )
            trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
            trainer.train()
            runs.append(
                {
                    "beta": beta,
                    "wall_s": time.perf_counter() - r0,
                    "cpu_s": common.cpu_seconds() - rc0,
                    "steps": trainer.state.global_step,
                }
            )
        return {"wall_s": time.perf_counter() - t0, "cpu_s": common.cpu_seconds() - c0, "runs": runs}

    import prefopt.pipeline.run as train_mod

    build = train_mod.build_trainer
    trainers = []

    def keep(*a, **k):
        trainers.append(build(*a, **k))
        return trainers[-1]

    train_mod.build_trainer = keep
    t0, c0 = time.perf_counter(), common.cpu_seconds()
    for beta in betas:
        r0, rc0 = time.perf_counter(), common.cpu_seconds()
        recipe = common.prefopt_recipe(
            Path(args.data),
            out / f"beta{beta}",
            batch=args.batch,
            epochs=1,
            max_length=args.max_length,
            beta=beta,
            cache_dir=Path(args.cache_dir),
        )
        summary = train_mod.train(recipe, output_dir=str(out / f"beta{beta}"), overwrite=True)
        events = getattr(trainers[-1], "reference_cache_events", [])
        runs.append(
            {
                "beta": beta,
                "wall_s": time.perf_counter() - r0,
                "cpu_s": common.cpu_seconds() - rc0,
                "steps": summary["global_step"],
                "cache": [("hit" if e["hit"] else "miss") for e in events],
            }
        )
    return {
        "wall_s": time.perf_counter() - t0,
        "cpu_s": common.cpu_seconds() - c0,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--scale", type=float, default=0.03, help="UltraFeedback lengths × this")
    ap.add_argument("--quick", action="store_true", help="2 rounds, 8 pairs")
    ap.add_argument("--with-in-memory", action="store_true", help="also TRL on an in-memory dataset")
    ap.add_argument("--worker", choices=("prefopt", "trl-mem", "trl-file"))
    (
        ap.add_argument("--data"),
        ap.add_argument("--model-dir"),
        ap.add_argument("--out"),
        ap.add_argument("--cache-dir"),
    )
    ap.add_argument("--betas", default=",".join(map(str, BETAS)))
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    if args.quick:
        args.reps, args.pairs = min(args.reps, 2), min(args.pairs, 8)

    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    data = common.write_jsonl(common.text_pairs(args.pairs, seed=1, scale=args.scale), tmp / "pairs.jsonl")
    mdir = common.model_dir(tmp)
    base = [
        "--data",
        str(data),
        "--model-dir",
        str(mdir),
        "--batch",
        str(args.batch),
        "--max-length",
        str(args.max_length),
    ]
    me = Path(__file__)
    kinds = ("prefopt", "trl-file", "trl-mem") if args.with_in_memory else ("prefopt", "trl-file")
    print(
        f"sweep: DPO β ∈ {BETAS}, builtin:{common.MODEL}, {args.pairs} pairs × 1 epoch per β, batch {args.batch}, "
        f"{args.reps} rounds; machine {common.machine()}",
        flush=True,
    )
    results: dict[str, list] = {k: [] for k in kinds}
    for i in range(args.reps):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            round_dir = tmp / f"{kind}-{i}"
            env = common.worker_env(
                PREFOPT_CACHE=str(round_dir / "prefopt-cache"),
                HF_DATASETS_CACHE=str(round_dir / "hf-datasets"),
            )  # cold caches every round
            r = common.run_worker(
                me,
                [
                    "--worker",
                    kind,
                    "--out",
                    str(round_dir / "out"),
                    "--cache-dir",
                    str(round_dir / "refcache"),
                    *base,
                ],
                env,
            )
            results[kind].append(r)
            detail = " ".join(
                f"{x['cpu_s']:.0f}" + (f"[{','.join(x['cache'])}]" if "cache" in x else "") for x in r["runs"]
            )
            print(
                f"  round {i + 1}/{args.reps} {kind:9s} {r['wall_s']:6.1f}s wall {r['cpu_s']:6.1f}s cpu  "
                f"per run cpu: {detail}",
                flush=True,
            )
            shutil.rmtree(round_dir, ignore_errors=True)

    def ratio(kind, base_kind, field):
        return common.median([a[field] / b[field] for a, b in zip(results[kind], results[base_kind])])

    print(f"\n{'':10s} {'median cpu s':>13s} {'median wall s':>14s}")
    for k in kinds:
        print(
            f"{k:10s} {common.median([r['cpu_s'] for r in results[k]]):13.1f} "
            f"{common.median([r['wall_s'] for r in results[k]]):14.1f}"
        )
    extra = {
        "measure": "CPU seconds of the 4-run sweep (fresh process, cold caches)",
        "vs_trl_wall": round(ratio("prefopt", "trl-file", "wall_s"), 4),
        "reps": args.reps,
        "pairs": args.pairs,
        "batch": args.batch,
    }
    print(f"prefopt / TRL: {ratio('prefopt', 'trl-file', 'cpu_s'):.3f} cpu, {extra['vs_trl_wall']:.3f} wall")
    if "trl-mem" in kinds:
        extra["vs_trl_in_memory_cpu"] = round(ratio("prefopt", "trl-mem", "cpu_s"), 4)
        print(f"prefopt / TRL with in-memory data: {extra['vs_trl_in_memory_cpu']:.3f} cpu")
    common.report("sweep", ratio("prefopt", "trl-file", "cpu_s"), TARGET, extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
