"""Prefix sharing: a DPO step with cached reference log-probs, prompt computed once vs today's split
forward, and against the new floor — an SFT step over the prompt-once tokens (P + C + R).

In one process, builtin small-25m weights (identical copies), one intra-op thread, for each length profile:

* **split** — prefopt's DPO trainer with the reference log-probs from the cache, prefix sharing off (the
  split forward on): what prefopt shipped before;
* **shared** — the same with ``prefix_sharing: true``: one packed sequence per pair, a 4-D mask;
* **sft-once** — ``trl.SFTTrainer`` on one sequence per pair, ``prompt + chosen + rejected`` (loss on both
  replies): the same number of tokens the shared forward computes, with a plain causal mask — the floor.

Length profiles: **hh** — the real HH-RLHF sample in ``../shared/data`` (prompt median ≈ 325 builtin
tokens, replies ≈ 134 / 141; multi-turn, the prompt is the larger part), or a synthetic stand-in with those
medians when the sample is absent; **uf** — UltraFeedback's spread (``common.text_pairs``, prompt 100–1,500
characters, replies 200–4,000, × ``--uf-scale``).

Each round takes the next batch of B pairs and runs one optimizer step of each trainer (rotating order);
after a warm-up round, ``--rounds`` rounds. The ratio is the median over rounds of the per-round CPU-second
ratios. Targets: shared / split ≤ 0.75 (hh) and ≤ 0.92 (uf); shared / sft-once ≤ 1.05. Peak memory
(``--memory``): each of split / shared in a fresh interpreter: after setup (model, data, the cached reference
log-probs) the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and 4 steps run (the first creates the
optimizer state); the peak above the RSS at the reset, with glibc's mmap threshold fixed (the RSS then follows
the live tensors) and at its default (freed heap stays resident); target shared / split ≤ 1.0 under both.

    python benchmarks/prefix_sharing.py [--rounds 5] [--batch 4] [--quick] [--memory]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TARGETS = {"hh": 0.75, "uf": 0.92, "floor": 1.05, "memory": 1.0}
HH = common.REPO.parent / "shared" / "data" / "anthropics_hh-rlhf__harmless-base__test.jsonl"


def hh_pairs(n: int, seed: int) -> tuple[list[dict[str, str]], str]:
    """HH-RLHF pairs through prefopt's own reader (the real sample, cycled), or a synthetic stand-in."""
    rng = random.Random(seed)
    if HH.exists():
        from prefopt.data.registry import get_source
        from prefopt.data.report import DropReport

        ds = get_source("hh_rlhf")({"path": str(HH)}, base_dir=None, seed=seed, report=DropReport())
        rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in ds]
        rows = [r for r in rows if isinstance(r["prompt"], str)] or rows
        rng.shuffle(rows)
        return [rows[i % len(rows)] for i in range(n)], f"{HH.name} ({len(rows)} pairs)"

    def text(k):
        return " ".join(rng.choice(common.WORDS) for _ in range(max(1, k // 6)))

    out = [
        {
            "prompt": text(int(rng.lognormvariate(5.78, 0.5))),  # median ≈ 325
            "chosen": text(int(rng.lognormvariate(4.9, 0.6))),  # ≈ 134
            "rejected": text(int(rng.lognormvariate(4.95, 0.6))),  # ≈ 141
        }
        for _ in range(n)
    ]
    return out, "synthetic HH-like lengths (../shared/data absent)"


def build(profile: str, n_pairs: int, max_length: int, uf_scale: float, tmp: Path):
    import datasets
    from datasets import Dataset

    from prefopt.data.fast_tokenize import tokenize_dataset_fast
    from prefopt.data.report import DropReport
    from prefopt.model.loading import load_tokenizer

    datasets.disable_progress_bars()
    if profile == "hh":
        pairs, what = hh_pairs(n_pairs, seed=3)
    else:
        pairs, what = common.text_pairs(n_pairs, seed=2, scale=uf_scale), f"UltraFeedback spread × {uf_scale}"
    tok = load_tokenizer(f"builtin:{common.MODEL}")
    ds = Dataset.from_list(pairs)
    if not isinstance(
        pairs[0]["prompt"], str
    ):  # conversational HH rows: the builtin chat template renders them
        from prefopt.data.transforms import render_chat_template

        ds = render_chat_template(ds, tok)
    tok_ds, _ = tokenize_dataset_fast(
        ds, "paired", tok, max_length=max_length, report=DropReport(), num_proc=1
    )
    if len(tok_ds) < n_pairs:  # rows longer than max_length are dropped: cycle the kept ones
        tok_ds = tok_ds.select([i % len(tok_ds) for i in range(n_pairs)])
    return (
        tok,
        tok_ds.select(range(n_pairs)).select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]),
        what,
    )


def trainers(
    tok,
    tok_ds,
    batch: int,
    max_length: int,
    tmp: Path,
    which=("split", "shared", "sft-once"),
    cache: Path | None = None,
):
    from prefopt.model.loading import build_builtin

    recipe = common.prefopt_recipe(
        tmp / "unused.jsonl",
        tmp / "run",
        batch=batch,
        steps=1,
        max_length=max_length,
        cache_dir=cache or tmp / "refcache",
    )

    def dpo(shared: bool):
        return common.cached_dpo_trainer(recipe, tok, tok_ds, tmp / f"dpo-{shared}", prefix_sharing=shared)

    out = {}
    if "split" in which:
        out["split"] = dpo(False)  # computes and stores the reference log-probs (not timed)
    if "shared" in which:
        out["shared"] = dpo(True)
    if "sft-once" in which:
        from datasets import Dataset
        from trl import SFTTrainer

        rows = [
            {
                "input_ids": r["prompt_ids"] + r["chosen_ids"] + r["rejected_ids"],
                "completion_mask": [0] * len(r["prompt_ids"])
                + [1] * (len(r["chosen_ids"]) + len(r["rejected_ids"])),
            }
            for r in tok_ds
        ]
        cfg = common.trl_sft_config(tmp / "sft", batch_pairs=batch, max_length=3 * max_length)
        cfg.per_device_train_batch_size = batch  # one sequence per pair
        out["sft-once"] = SFTTrainer(
            model=build_builtin(common.MODEL, common.SEED),
            args=cfg,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
        )
    for t in out.values():
        t.model.train()
        t.current_gradient_accumulation_steps = 1
        t._bench_opt = t.create_optimizer()
    return out


def batch_for(trainer, k: int, batch: int):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(k * batch, (k + 1) * batch)])


def step(trainer, batch) -> dict:
    inputs = trainer._prepare_inputs(batch)
    t0, c0 = time.perf_counter(), common.cpu_seconds()
    loss = trainer.training_step(trainer.model, inputs)
    trainer._bench_opt.step()
    trainer._bench_opt.zero_grad(set_to_none=True)
    return {"wall": time.perf_counter() - t0, "cpu": common.cpu_seconds() - c0, "loss": float(loss)}


def time_profile(profile: str, args, tmp: Path) -> dict:
    tok, tok_ds, what = build(profile, args.batch * (args.rounds + 1), args.max_length, args.uf_scale, tmp)
    ts = trainers(tok, tok_ds, args.batch, args.max_length, tmp / profile)
    order = list(ts)
    results: dict[str, list] = {k: [] for k in order}
    lens = [(len(r["prompt_ids"]), len(r["chosen_ids"]), len(r["rejected_ids"])) for r in tok_ds]
    med = [common.median([x[i] for x in lens]) for i in range(3)]
    print(
        f"\n[{profile}] {what}: median prompt / chosen / rejected tokens {med[0]:.0f} / {med[1]:.0f} / {med[2]:.0f}"
    )
    for k in range(args.rounds + 1):
        rot = order[k % len(order) :] + order[: k % len(order)]
        got = {name: step(ts[name], batch_for(ts[name], k, args.batch)) for name in rot}
        if k == 0:
            continue
        for name in order:
            results[name].append(got[name])
        print(
            f"  round {k}/{args.rounds}: " + "  ".join(f"{n} {got[n]['cpu']:.2f}s" for n in order), flush=True
        )
    assert abs(results["split"][0]["loss"] - results["shared"][0]["loss"]) < 1e-4, "the same loss"

    def ratio(a, b, field="cpu"):
        return common.median([x[field] / y[field] for x, y in zip(results[a], results[b])])

    out = {
        "shared_over_split": round(ratio("shared", "split"), 4),
        "shared_over_split_wall": round(ratio("shared", "split", "wall"), 4),
        "shared_over_sft_once": round(ratio("shared", "sft-once"), 4),
        "split_over_sft_once": round(ratio("split", "sft-once"), 4),
        "median_lengths": med,
        "data": what,
    }
    print(
        f"  shared / split {out['shared_over_split']:.3f} cpu ({out['shared_over_split_wall']:.3f} wall); "
        f"shared / sft-once {out['shared_over_sft_once']:.3f}"
    )
    return out


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (``/proc/self/clear_refs`` ← 5, Linux) and return the RSS now (KiB):
    the peak measured after this point is the step's own, not the setup's (model load, data, cache reads).
    Where that is not available, the process's peak so far (ru_maxrss)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_kb("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss() -> int:
    """The peak RSS (KiB) since :func:`reset_peak_rss` (VmHWM), else ru_maxrss."""
    hwm = _status_kb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_worker(profile: str, variant: str, args) -> None:
    """One fresh interpreter: ``fill`` computes the reference log-probs into the shared cache; ``split`` /
    ``shared`` then read them (a hit: no precompute peak) and run 4 steps; the peak RSS above the RSS after
    setup. The first step counts: it creates the optimizer state (the same for both) and, under glibc's
    default allocator, the heap the later steps reuse, so resetting the mark after it would measure only
    what each variant's later steps add beyond what it already holds, not what it needs."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-prefix-mem-{variant}-"))
    common.pin_threads(1)
    tok, tok_ds, _ = build(profile, args.batch * 4, args.max_length, args.uf_scale, tmp)
    which = ("split",) if variant == "fill" else (variant,)
    t = trainers(tok, tok_ds, args.batch, args.max_length, tmp, which=which, cache=Path(args.mem_cache))
    t = t[which[0]]
    import gc

    gc.collect()
    base = reset_peak_rss()
    if variant != "fill":
        for k in range(4):
            step(t, batch_for(t, k, args.batch))
    peak = peak_rss()
    print("MEM " + json.dumps({"variant": variant, "base_kb": base, "peak_kb": peak}))


# glibc's default allocator raises its mmap threshold as large blocks are freed, so later large tensors come
# from the heap and freed memory stays resident: the RSS after a step keeps what the step held, and the peak
# moves with how allocations happened to be reused. With a fixed threshold every block above it is its own
# mapping, returned when freed, so the RSS follows the live tensors. Both are measured.
MALLOCS = {"fixed": {"MALLOC_MMAP_THRESHOLD_": "65536"}, "default": {}}


def memory(profile: str, args) -> dict[str, float]:
    """Peak memory shared / split under both allocator settings (``MALLOCS``): ``{"fixed": r, "default": r}``."""
    out = {}
    for malloc, extra in MALLOCS.items():
        deltas: dict[str, list[float]] = {"split": [], "shared": []}
        cache = tempfile.mkdtemp(prefix="bench-prefix-memcache-")
        order = [
            v
            for rep in range(args.mem_reps)
            for v in (("split", "shared") if rep % 2 == 0 else ("shared", "split"))
        ]
        for variant in ["fill", *order]:
            cmd = [
                sys.executable,
                __file__,
                "--mem-worker",
                variant,
                "--profile",
                profile,
                "--mem-cache",
                cache,
            ]
            cmd += [
                "--batch",
                str(args.batch),
                "--max-length",
                str(args.max_length),
                "--uf-scale",
                str(args.uf_scale),
            ]
            proc = subprocess.run(
                cmd, env=common.worker_env(**extra), capture_output=True, text=True, timeout=1800
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("MEM ")), None)
            if line is None:
                raise RuntimeError(proc.stderr[-2000:])
            r = json.loads(line[4:])
            if variant != "fill":
                deltas[variant].append(max(1, r["peak_kb"] - r["base_kb"]))
        ratio = common.median([a / b for a, b in zip(deltas["shared"], deltas["split"])])
        print(
            f"  [{profile}] peak memory of 4 steps above the RSS after setup ({malloc} malloc threshold): shared "
            f"{common.median(deltas['shared']) / 1024:.0f} MiB, split {common.median(deltas['split']) / 1024:.0f} MiB"
            f" → {ratio:.3f}"
        )
        out[malloc] = round(ratio, 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--uf-scale", type=float, default=0.1)
    ap.add_argument("--profiles", nargs="+", default=["hh", "uf"])
    ap.add_argument("--memory", action="store_true", help="also measure peak RSS (fresh interpreters)")
    ap.add_argument("--mem-reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 rounds")
    ap.add_argument("--mem-worker", help=argparse.SUPPRESS)
    ap.add_argument("--profile", default="hh", help=argparse.SUPPRESS)
    ap.add_argument("--mem-cache", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mem_worker:
        memory_worker(args.profile, args.mem_worker, args)
        return 0
    if args.quick:
        args.rounds = min(args.rounds, 2)
    common.pin_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
    print(
        f"prefix sharing: DPO step with cached reference, builtin:{common.MODEL}, {args.batch} pairs per step, "
        f"{args.rounds} rounds; machine {common.machine()}",
        flush=True,
    )
    res: dict = {}
    for profile in args.profiles:
        res[profile] = time_profile(profile, args, tmp)
        if args.memory:
            mem = memory(profile, args)
            res[profile]["memory_shared_over_split"] = mem["fixed"]  # the RSS follows the live tensors
            res[profile]["memory_shared_over_split_default_malloc"] = mem["default"]
    met = (
        all(res[p]["shared_over_split"] <= TARGETS[p] for p in res)
        and all(res[p]["shared_over_sft_once"] <= TARGETS["floor"] for p in res)
        and all(
            res[p].get(key, 0.0) <= TARGETS["memory"]
            for p in res
            for key in ("memory_shared_over_split", "memory_shared_over_split_default_malloc")
        )
    )
    lead = "hh" if "hh" in res else next(iter(res))  # the headline: HH-RLHF lengths, else the one profile run
    extra = {"targets": TARGETS, "all_met": met, "headline_profile": lead, **res}
    common.report("prefix_sharing", res[lead]["shared_over_split"], TARGETS[lead], extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
