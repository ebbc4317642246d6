"""Data-layer throughput: UltraFeedback-H4-shaped rows → canonical pairs → token ids.

Generates ``--rows`` rows (default 60,000) in the exact HuggingFaceH4/ultrafeedback_binarized
schema (string prompt, [user, assistant] chosen/rejected repeating it, ``messages``, scores with
~15% ties) with prompts of 100–1,500 characters and replies of 200–4,000 characters, writes them as
JSONL, then times

1. reading + converting with the ``ultrafeedback_h4`` source (ties/N-A/identical checks included),
2. tokenising with the builtin tokenizer (``max_length`` 2048) through
   :func:`prefopt.data.fast_tokenize.tokenize_dataset_fast`,

and prints rows/s per stage and in total. The generation is not timed. ``--reference-rows N`` also
times prefopt's per-row reference ``tokenize_dataset`` on the first N rows for comparison (and
checks both give the same ids). Target: 60k rows in under 60 s on 2 cores.

    python benchmarks/data.py                 # 60,000 rows
    python benchmarks/data.py --rows 5000     # quicker
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an not but have which "
    "you can will if their more one all would there has been model data we use when each also into "
    "function return value example error code python list string number should first time new may "
    "answer question because however therefore important consider different following provide "
    "information approach result example system process support help using based other these those "
    "écrire naïve café 東京 данные 🙂"
).split()


def make_corpus(rng: random.Random, size: int = 2_000_000) -> str:
    parts: list[str] = []
    total = 0
    while total < size:
        sentence = (
            " ".join(rng.choices(WORDS, k=rng.randint(6, 24))).capitalize() + rng.choice(".,;:?!") + " "
        )
        if rng.random() < 0.08:
            sentence += "\n\n"
        if rng.random() < 0.02:
            sentence += "```python\ndef f(x):\n    return x * 2\n```\n"
        parts.append(sentence)
        total += len(sentence)
    return "".join(parts)


def draw_length(rng: random.Random, lo: int, hi: int, dist: str) -> int:
    if dist == "uniform":
        return rng.randint(lo, hi)
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def generate(path: Path, rows: int, seed: int, dist: str) -> None:
    rng = random.Random(seed)
    corpus = make_corpus(rng)

    def text(lo: int, hi: int) -> str:
        n = draw_length(rng, lo, hi, dist)
        start = rng.randrange(0, len(corpus) - n)
        return corpus[start : start + n].strip() or "x"

    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(rows):
            prompt = text(100, 1500)
            chosen, rejected = text(200, 4000), text(200, 4000)
            sc = rng.choice([x / 2 for x in range(2, 21)])
            lower = [x / 2 for x in range(2, int(sc * 2))]
            sr = sc if rng.random() < 0.15 or not lower else rng.choice(lower)
            user = {"content": prompt, "role": "user"}
            row = {
                "prompt": prompt,
                "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
                "chosen": [user, {"content": chosen, "role": "assistant"}],
                "rejected": [user, {"content": rejected, "role": "assistant"}],
                "messages": [user, {"content": chosen, "role": "assistant"}],
                "score_chosen": sc,
                "score_rejected": sr,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the tokenising workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--lengths",
        choices=("loguniform", "uniform"),
        default="loguniform",
        help="length distribution within the ranges (log-uniform is heavy-tailed like the real data)",
    )
    ap.add_argument(
        "--num-proc", type=int, default=None, help="tokenisation processes (default: usable cores)"
    )
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument(
        "--reference-rows",
        type=int,
        default=300,
        help="also time the per-row reference tokenize_dataset on this many rows (0: skip)",
    )
    ap.add_argument("--keep", type=Path, default=None, help="write the generated JSONL here and keep it")
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import datasets
    import pyarrow.compute as pc

    from prefopt.data.fast_tokenize import default_num_proc, tokenize_dataset_fast
    from prefopt.data.registry import get_source
    from prefopt.data.report import DropReport
    from prefopt.data.tokenization import tokenize_dataset
    from prefopt.model.loading import load_tokenizer

    datasets.disable_progress_bars()
    tmp = tempfile.TemporaryDirectory()
    path = args.keep or Path(tmp.name) / "ultrafeedback_h4.jsonl"
    t0 = time.perf_counter()
    generate(path, args.rows, args.seed, args.lengths)
    gen_s = time.perf_counter() - t0
    size_mb = path.stat().st_size / 1e6
    print(
        f"generated {args.rows:,} rows ({size_mb:,.0f} MB JSONL, {args.lengths} lengths) in {gen_s:.1f}s (not timed)"
    )

    tok = load_tokenizer("builtin:tiny-arith")
    procs = args.num_proc or default_num_proc(args.rows)
    report = DropReport()
    t0, c0 = time.perf_counter(), cpu_seconds()
    ds = get_source("ultrafeedback_h4")({"path": str(path)}, base_dir=None, seed=args.seed, report=report)
    convert_s, convert_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    t1, c1 = time.perf_counter(), cpu_seconds()
    tok_ds, stats = tokenize_dataset_fast(
        ds, "paired", tok, max_length=args.max_length, report=report, num_proc=procs
    )
    tokenize_s, tokenize_cpu = time.perf_counter() - t1, cpu_seconds() - c1
    total_s = convert_s + tokenize_s
    table = tok_ds.with_format("arrow")[:]
    n_tokens = sum(
        int(pc.sum(pc.list_value_length(table.column(c))).as_py())
        for c in ("prompt_ids", "chosen_ids", "rejected_ids")
    )

    print(report.summary())
    rows = f"{args.rows:,} rows"
    print(
        f"convert (ultrafeedback_h4): {convert_s:7.2f}s wall {convert_cpu:7.2f}s cpu {args.rows / convert_s:8,.0f} rows/s"
    )
    print(
        f"tokenize ({procs} proc):          {tokenize_s:7.2f}s wall {tokenize_cpu:7.2f}s cpu {len(ds) / tokenize_s:8,.0f} rows/s"
    )
    print(
        f"total for {rows}:     {total_s:7.2f}s wall {convert_cpu + tokenize_cpu:7.2f}s cpu {args.rows / total_s:8,.0f} rows/s"
    )
    print(
        f"cores: {len(os.sched_getaffinity(0))}; load average now {os.getloadavg()[0]:.1f} (wall times stretch when "
        "other processes compete for the cores, cpu seconds do not)"
    )
    print(f"tokens kept: {n_tokens:,}")
    print(f"truncation: {stats.as_dict()}")

    if args.reference_rows:
        sub = ds.select(range(min(args.reference_rows, len(ds))))
        t2 = time.perf_counter()
        ref, _ = tokenize_dataset(sub, "paired", tok, max_length=args.max_length)
        ref_s = time.perf_counter() - t2
        fast_sub = tok_ds.select(range(len(sub))).select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
        same = (
            fast_sub.to_list() == ref.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list()
        )
        print(
            f"reference tokenize_dataset on {len(sub):,} rows: {len(sub) / ref_s:,.0f} rows/s "
            f"(~{len(ds) / (len(sub) / ref_s):,.0f}s for all rows); identical ids: {same}"
        )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
