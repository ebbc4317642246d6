"""Run every benchmark and print one table of ratios (the numbers recorded in benchmarks/RESULTS.md).

    python benchmarks/run_all.py            # full: medians of 5 alternating rounds (about 1.5 h on 2 busy cores)
    python benchmarks/run_all.py --quick    # a few minutes-per-benchmark smoke run (fewer rounds, less data)
    python benchmarks/run_all.py --only padding limit

Each benchmark runs in its own process and prints ``RESULT {json}`` as its last line; its full output is
streamed through. ``data`` (UltraFeedback conversion throughput, benchmarks/data.py) reports rows/s
rather than a ratio.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

BENCHMARKS = ("padding", "limit", "prefix_sharing", "memory", "overhead", "sweep", "data", "generation")
TARGETS = {
    "overhead": "≤ 1.02",
    "sweep": "≤ 0.80",
    "limit": "≤ 1.05",
    "prefix_sharing": "≤ 0.75 (hh; uf ≤ 0.92, floor ≤ 1.05)",
    "padding": "≤ 1.10",
    "memory": "≤ 1.10",
    "data": "60k rows < 60 s",
    "generation": "≥ 2.0",
}


def run(name: str, quick: bool) -> dict:
    args = [sys.executable, str(HERE / f"{name}.py")]
    if name == "data":
        args += ["--rows", "5000" if quick else "60000", "--reference-rows", "0"]
    elif quick:
        args.append("--quick")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=common.worker_env()
    )
    lines = []
    for line in proc.stdout:
        print(f"[{name}] {line}", end="", flush=True)
        lines.append(line)
    proc.wait()
    res = {"benchmark": name, "rc": proc.returncode, "seconds": round(time.perf_counter() - t0)}
    for line in lines:
        if line.startswith("RESULT "):
            res.update(json.loads(line[len("RESULT ") :]))
    if name == "data":
        for line in lines:
            m = re.match(r"total for ([\d,]+) rows:\s+([\d.]+)s wall", line)
            if m:
                rows, secs = int(m.group(1).replace(",", "")), float(m.group(2))
                res.update(
                    ratio=None,
                    value=f"{rows:,} rows in {secs:.1f}s ({rows / secs:,.0f} rows/s)",
                    met=secs * 60000 / rows < 60,
                )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", choices=BENCHMARKS)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    print(f"machine: {common.machine()}", flush=True)
    results = [run(name, args.quick) for name in (args.only or BENCHMARKS)]
    print("\n| benchmark | ratio | target | met | seconds |\n|---|---|---|---|---|")
    for r in results:
        value = r.get("value") or (
            f"{r['ratio']:.3f}" if r.get("ratio") is not None else f"failed (rc {r['rc']})"
        )
        met = {True: "yes", False: "**no**"}.get(r.get("met"), "?")
        print(f"| {r['benchmark']} | {value} | {TARGETS[r['benchmark']]} | {met} | {r['seconds']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r.get("rc") == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
