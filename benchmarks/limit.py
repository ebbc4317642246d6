"""Limit: a DPO step with cached reference log-probs vs an SFT step on the same chosen + rejected
tokens — the cost floor (one forward and one backward over the same tokens).

In one process, on the builtin small-25m weights (three identical copies), with one intra-op thread:

* **prefopt DPO** — prefopt's DPO trainer class (TRL's ``DPOTrainer`` with prefopt's reference cache
  and batching mixins), ``precompute_ref_log_probs=True``, the reference log-probs read from the cache
  (computed once before timing), as shipped: the split forward is on;
* **prefopt DPO, split off** — the same with the split forward off: the same ``(2B, L)`` tensor as SFT;
* **TRL SFT** — ``trl.SFTTrainer`` on the 2B sequences of the same pairs (``input_ids`` = prompt +
  completion, loss on the completion), which its collator pads into the same ``(2B, L)`` layout.

Each round takes the next batch of B pairs and runs one optimizer step (``training_step`` — forward,
backward — then ``optimizer.step()``) of each trainer, in a rotating order; after one warm-up round,
``--rounds`` rounds (default 7). Step CPU and wall seconds are recorded; the ratio is the median over
rounds of DPO / SFT (CPU seconds). Target ≤ 1.05, read on the apples-to-apples pair (split off; the
shipped DPO processes fewer padding slots than the SFT step, so its ratio is lower still).

    python benchmarks/limit.py [--rounds 7] [--batch 4] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TARGET = 1.05


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--scale", type=float, default=0.05, help="UltraFeedback lengths × this")
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 3)
    common.pin_threads(1)
    import datasets
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from prefopt.data.fast_tokenize import tokenize_dataset_fast
    from prefopt.data.report import DropReport
    from prefopt.model.loading import build_builtin, load_tokenizer

    datasets.disable_progress_bars()
    tmp = Path(tempfile.mkdtemp(prefix="bench-limit-"))
    n_batches = args.rounds + 1
    pairs = common.text_pairs(args.batch * n_batches, seed=2, scale=args.scale)
    tok = load_tokenizer(f"builtin:{common.MODEL}")
    tok_ds, _ = tokenize_dataset_fast(
        Dataset.from_list(pairs), "paired", tok, max_length=args.max_length, report=DropReport(), num_proc=1
    )
    tok_ds = tok_ds.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    recipe = common.prefopt_recipe(
        tmp / "unused.jsonl",
        tmp / "run",
        batch=args.batch,
        steps=1,
        max_length=args.max_length,
        cache_dir=tmp / "refcache",
    )

    def dpo_trainer(split: bool):
        return common.cached_dpo_trainer(
            recipe,
            tok,
            tok_ds,
            tmp / f"dpo-{split}",
            split_forward=split,
            prefix_sharing=False,  # the floor with prefix sharing: benchmarks/prefix_sharing.py (sft-once)
        )

    dpo = dpo_trainer(True)  # computes and stores the reference log-probs (not timed)
    dpo_nosplit = dpo_trainer(False)  # reads them from the cache
    assert [e["hit"] for e in dpo_nosplit.reference_cache_events] == [True]

    sft_rows = [
        {
            "input_ids": r["prompt_ids"] + r[side],
            "completion_mask": [0] * len(r["prompt_ids"]) + [1] * len(r[side]),
        }
        for r in tok_ds
        for side in ("chosen_ids", "rejected_ids")
    ]
    sft_cfg = common.trl_sft_config(tmp / "sft", batch_pairs=args.batch, max_length=args.max_length)
    sft = SFTTrainer(
        model=build_builtin(common.MODEL, common.SEED),
        args=sft_cfg,
        train_dataset=Dataset.from_list(sft_rows),
        processing_class=tok,
    )

    def batches_for(k):
        rows = [dpo.train_dataset[i] for i in range(k * args.batch, (k + 1) * args.batch)]
        sft_batch = [
            sft.train_dataset[2 * i + j] for j in (0, 1) for i in range(k * args.batch, (k + 1) * args.batch)
        ]
        return dpo.data_collator(rows), dpo_nosplit.data_collator(rows), sft.data_collator(sft_batch)

    runners = {}
    for name, trainer in (("dpo", dpo), ("dpo-nosplit", dpo_nosplit), ("sft", sft)):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which we do not run
        runners[name] = (trainer, trainer.create_optimizer())

    def step(name, batch):
        trainer, opt = runners[name]
        inputs = trainer._prepare_inputs(batch)
        t0, c0 = time.perf_counter(), common.cpu_seconds()
        loss = trainer.training_step(trainer.model, inputs)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"wall": time.perf_counter() - t0, "cpu": common.cpu_seconds() - c0, "loss": float(loss)}

    print(
        f"limit: DPO step (cached reference) vs SFT step, builtin:{common.MODEL}, {args.batch} pairs "
        f"(= {2 * args.batch} sequences) per step, {args.rounds} rounds; machine {common.machine()}",
        flush=True,
    )
    order = ["dpo", "dpo-nosplit", "sft"]
    results: dict[str, list] = {k: [] for k in order}
    for k in range(n_batches):
        b_dpo, b_nosplit, b_sft = batches_for(k)
        assert torch.equal(b_nosplit["input_ids"], b_sft["input_ids"]), (
            "DPO and SFT batches must hold the same tokens"
        )
        rot = order[k % 3 :] + order[: k % 3]
        got = {name: step(name, {"dpo": b_dpo, "dpo-nosplit": b_nosplit, "sft": b_sft}[name]) for name in rot}
        real = int(b_sft["attention_mask"].sum())
        if k == 0:
            print(f"  warm-up round ({real} real tokens, layout {tuple(b_sft['input_ids'].shape)})")
            continue
        for name in order:
            results[name].append(got[name])
        print(
            f"  round {k}/{args.rounds} ({real} real tokens, layout {tuple(b_sft['input_ids'].shape)}): "
            + "  ".join(f"{name} {got[name]['cpu']:.2f}s" for name in order),
            flush=True,
        )

    def ratio(a, b, field):
        return common.median([x[field] / y[field] for x, y in zip(results[a], results[b])])

    for name in order:
        print(
            f"{name:12s} median step {common.median([r['cpu'] for r in results[name]]):.2f}s cpu "
            f"{common.median([r['wall'] for r in results[name]]):.2f}s wall"
        )
    print(
        f"prefopt DPO (as shipped, split forward) / SFT: {ratio('dpo', 'sft', 'cpu'):.3f} cpu, "
        f"{ratio('dpo', 'sft', 'wall'):.3f} wall"
    )
    common.report(
        "limit",
        ratio("dpo-nosplit", "sft", "cpu"),
        TARGET,
        {
            "measure": "CPU seconds per optimizer step, same (2B, L) tokens; DPO split forward off",
            "nosplit_wall": round(ratio("dpo-nosplit", "sft", "wall"), 4),
            "shipped_cpu": round(ratio("dpo", "sft", "cpu"), 4),
            "shipped_wall": round(ratio("dpo", "sft", "wall"), 4),
            "rounds": args.rounds,
            "batch_pairs": args.batch,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
