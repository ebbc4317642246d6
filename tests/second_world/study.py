"""The study: each algorithm through ``prefopt train`` and through plain TRL at the same settings, on
the same SFT model and the same user file, scored by the same independent evaluator.

Every training run is a fresh subprocess with one torch thread (``jobs`` of them at a time); the
evaluator runs in this process as each run finishes. Results are appended to
``<workdir>/results.jsonl`` so that an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import build, evaluate, prefopt_run
from .trl_baseline import ALGORITHMS

KINDS = ("prefopt", "trl")
SEEDS = (42, 43, 44)
TESTS_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    kind: str
    algorithm: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.algorithm}-{self.seed}"


def _start(job: Job, world: build.World, workdir: Path) -> subprocess.Popen:
    out = workdir / job.name
    if job.kind == "prefopt":
        return prefopt_run.start(job.algorithm, world.model_dir, world.pairs, out, job.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "-m",
        "second_world.trl_baseline",
        "--algorithm",
        job.algorithm,
        "--model",
        str(world.model_dir),
        "--pairs",
        str(world.pairs),
        "--out",
        str(out),
        "--seed",
        str(job.seed),
    ]
    log = open(workdir / f"{job.name}.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _summary(job: Job, workdir: Path) -> dict:
    """What the run itself reports: steps, and for prefopt the rows its data step kept."""
    out = workdir / job.name
    info: dict = {}
    if job.kind == "prefopt":
        m = json.loads((out / "manifest.json").read_text())
        info["steps"] = m.get("global_step")
        info["train_seconds"] = m.get("train_runtime_s")
        rep = prefopt_run.data_report(out)
        info["rows_trained"] = rep.get("rows_out")
        info["dropped"] = rep.get("drops", {})
    else:
        m = json.loads((out / "trl_run.json").read_text())
        info["steps"] = m["steps"]
        info["train_seconds"] = m["train_seconds"]
    return info


def run(
    world: build.World,
    workdir: str | Path,
    *,
    algorithms=ALGORITHMS,
    seeds=SEEDS,
    kinds=KINDS,
    jobs: int = 2,
    progress=print,
) -> list[dict]:
    """Train and evaluate every (kind, algorithm, seed); returns one result dict per run."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "results.jsonl"
    done = {}
    if store.exists():
        for line in store.read_text().splitlines():
            r = json.loads(line)
            done[(r["kind"], r["algorithm"], r["seed"])] = r
    todo = [Job(k, a, s) for s in seeds for a in algorithms for k in kinds if (k, a, s) not in done]
    prompts = evaluate.eval_prompts()
    running: list[tuple[Job, subprocess.Popen, float]] = []
    with build.torch_threads(1):
        while todo or running:
            while todo and len(running) < jobs:
                job = todo.pop(0)
                running.append((job, _start(job, world, workdir), time.time()))
            time.sleep(0.5)
            for item in list(running):
                job, proc, t0 = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if proc.returncode != 0:
                    log = (workdir / f"{job.name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{job.name} exited with {proc.returncode}:\n{log}")
                res = {"kind": job.kind, "algorithm": job.algorithm, "seed": job.seed}
                res.update(_summary(job, workdir))
                res["wall_seconds"] = round(time.time() - t0, 1)
                res.update(evaluate.evaluate(workdir / job.name / "model", prompts=prompts))
                with open(store, "a") as fh:
                    fh.write(json.dumps(res) + "\n")
                done[(job.kind, job.algorithm, job.seed)] = res
                progress(
                    f"{job.name}: sampled {res['reward_sampled']:.3f} greedy {res['reward_greedy']:.3f} "
                    f"({res['steps']} steps, {res['wall_seconds']} s)"
                )
    return [done[(k, a, s)] for s in seeds for a in algorithms for k in kinds]


def cell(results: list[dict], kind: str, algorithm: str, metric: str = "reward_sampled") -> list[float]:
    return [r[metric] for r in results if r["kind"] == kind and r["algorithm"] == algorithm]


def seed_noise(results: list[dict], metric: str = "reward_sampled") -> dict[str, float]:
    """Per algorithm and kind, the spread (max − min) of ``metric`` over the seeds."""
    out = {}
    for r in results:
        key = f"{r['kind']}/{r['algorithm']}"
        out.setdefault(key, []).append(r[metric])
    return {k: max(v) - min(v) for k, v in out.items()}


def table(results: list[dict], reference: dict, algorithms=ALGORITHMS) -> str:
    """Markdown: per algorithm, prefopt and plain TRL, sampled and greedy true reward over seeds."""

    def fmt(vals: list[float], ref: float) -> str:
        if not vals:
            return "—"
        m = statistics.mean(vals)
        if len(vals) == 1:
            return f"{m:.3f} ({m - ref:+.3f})"
        return f"{m:.3f} ({m - ref:+.3f}; {min(vals):.3f} – {max(vals):.3f})"

    rs, rg = reference["reward_sampled"], reference["reward_greedy"]
    lines = [
        "| algorithm | prefopt, sampled | plain TRL, sampled | prefopt, greedy | plain TRL, greedy |",
        "|---|---|---|---|---|",
    ]
    for a in algorithms:
        lines.append(
            f"| {a.upper() if a != 'simpo' else 'SimPO'} | {fmt(cell(results, 'prefopt', a), rs)} | "
            f"{fmt(cell(results, 'trl', a), rs)} | {fmt(cell(results, 'prefopt', a, 'reward_greedy'), rg)} | "
            f"{fmt(cell(results, 'trl', a, 'reward_greedy'), rg)} |"
        )
    lines.append(f"| reference (SFT) | {rs:.3f} | {rs:.3f} | {rg:.3f} | {rg:.3f} |")
    return "\n".join(lines)
