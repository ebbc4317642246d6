"""The second world: prefopt vs plain TRL at the same settings on a model and data prefopt did not shape.

A small Llama SFT-trained by plain TRL (word-level tokenizer with BOS), the user's own pairs as JSONL
with their own column names, each of the five algorithms through ``prefopt train`` and through plain
TRL at the settings users copy from the papers and TRL's docs (β 0.1 / τ 0.1 / λ 0.1, SimPO β 2,
γ/β 0.25; lr 1e-4, 1 epoch, batch 32), 3 seeds each, scored by one independent evaluator (plain
``transformers`` sampling on held-out prompts). See tests/second_world/ and docs/world.md
("A second world prefopt did not shape").

    python benchmarks/second_world.py [--workdir DIR] [--seeds 42 43 44] [--algorithms dpo kto]
                                      [--jobs 2] [--markdown OUT.md]

Runs are cached in ``--workdir`` (results.jsonl), so a rerun only trains what is missing; pass a fresh
directory to re-measure. Prints the table (mean, min – max over seeds, the SFT reference) and the seed
noise, and writes the table as markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from second_world import build, study  # noqa: E402
from second_world.trl_baseline import ALGORITHMS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=str(REPO / "runs" / "second_world"))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(study.SEEDS))
    ap.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    ap.add_argument(
        "--kinds",
        nargs="+",
        default=list(study.KINDS),
        choices=study.ALL_KINDS,
        help="prefopt, trl, and the variants used to explain gaps: trl-shuffled, trl-cpo_alpha0, "
        "prefopt-noshuffle, prefopt-sft_weight1[-noshuffle] (SimPO with TRL's NLL term)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="training subprocesses at a time (one thread each)")
    ap.add_argument("--markdown", default=None, help="write the table here (default: <workdir>/table.md)")
    a = ap.parse_args(argv)

    t0 = time.time()
    world = build.world()
    info = world.info
    ref = info["reference"]
    print(
        f"world: {world.root} (built in {info['build_seconds']} s; {info['rows']} rows, {info['prompts']} prompts)"
    )
    print(f"reference (SFT): sampled {ref['reward_sampled']:.3f}, greedy {ref['reward_greedy']:.3f}")
    results = study.run(world, a.workdir, algorithms=a.algorithms, seeds=a.seeds, kinds=a.kinds, jobs=a.jobs)
    md = study.table(results, ref, a.algorithms)
    noise = study.seed_noise(results)
    lines = [md, "", "Seed spread of the sampled true reward (max − min over seeds):", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in sorted(noise.items())]
    if noise:
        lines.append(f"- largest: {max(noise.values()):.3f}; median: {statistics.median(noise.values()):.3f}")
    rows_kto = [r for r in results if r["kind"] == "prefopt" and r["algorithm"] == "kto"]
    if rows_kto:
        lines.append(
            f"- prefopt KTO rows trained: {rows_kto[0].get('rows_trained')} (dropped: {rows_kto[0].get('dropped')})"
        )
    text = "\n".join(lines)
    print()
    print(text)
    out = Path(a.markdown) if a.markdown else Path(a.workdir) / "table.md"
    out.write_text(text + "\n")
    (Path(a.workdir) / "results.json").write_text(
        json.dumps({"reference": ref, "results": results}, indent=2) + "\n"
    )
    print(f"\nwrote {out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
