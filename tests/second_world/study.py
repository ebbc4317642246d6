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
# plain-TRL variants used to find the cause of a gap (benchmarks/second_world.py --kinds ...); not in the table
TRL_VARIANTS = {
    "trl": [],
    # TRL with its training rows shuffled first: for KTO (sequential sampler) every batch then mixes labels
    "trl-shuffled": ["--shuffle"],
    # TRL's SimPO without CPO's NLL term (cpo_alpha 0), i.e. the paper's SimPO, as prefopt runs it
    "trl-cpo_alpha0": ["--set", "cpo_alpha=0.0"],
}
# prefopt with the file's row order kept (data.shuffle: false): its sampler then draws exactly the
# batches plain TRL draws with the same seed, which separates batch-order noise from real differences
PREFOPT_VARIANTS = {"prefopt": True, "prefopt-noshuffle": False}
# prefopt with extra `loss:` keys (kind -> (shuffle, loss keys)): SimPO with TRL's NLL term
# (loss.sft_weight 1.0 = TRL's default cpo_alpha), i.e. TRL's CPO-SimPO run through prefopt
PREFOPT_LOSS_VARIANTS = {
    "prefopt-sft_weight1": (True, {"sft_weight": 1.0}),
    "prefopt-sft_weight1-noshuffle": (False, {"sft_weight": 1.0}),
    # KTO at TRL's default weights 1 : 1 (the lower end of KTO's rule on these balanced counts), against
    # prefopt's default without weights, 1.33 : 1 (the upper end; docs/world.md, "KTO's default weights")
    "prefopt-kto_w1": (True, {"desirable_weight": 1.0, "undesirable_weight": 1.0}),
}
PREFOPT_KINDS = (*PREFOPT_VARIANTS, *PREFOPT_LOSS_VARIANTS)
ALL_KINDS = (*PREFOPT_KINDS, *TRL_VARIANTS)
ONLY_FOR = {  # variants that exist for some algorithms only
    "trl-cpo_alpha0": {"simpo"},
    "prefopt-sft_weight1": {"simpo"},
    "prefopt-sft_weight1-noshuffle": {"simpo"},
    "prefopt-kto_w1": {"kto"},
}


def applies(kind: str, algorithm: str) -> bool:
    return algorithm in ONLY_FOR.get(kind, {algorithm})


SEEDS = (42, 43, 44)
TESTS_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Job:
    kind: str
    algorithm: str  # for a plain-TRL batch: several, joined by "+"
    seed: int

    @property
    def algorithms(self) -> list[str]:
        return self.algorithm.split("+")

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.algorithm}-{self.seed}"

    def run_name(self, algorithm: str) -> str:
        return f"{self.kind}-{algorithm}-{self.seed}"


def _start(job: Job, world: build.World, workdir: Path) -> subprocess.Popen:
    out = workdir / job.name
    if job.kind in PREFOPT_KINDS:
        shuffle, loss = PREFOPT_LOSS_VARIANTS.get(job.kind, (PREFOPT_VARIANTS.get(job.kind), {}))
        return prefopt_run.start(job.algorithm, world.model_dir, world.pairs, out, job.seed, shuffle, loss)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "-m",
        "second_world.trl_baseline",
        "--algorithm",
        *job.algorithms,
        "--model",
        str(world.model_dir),
        "--pairs",
        str(world.pairs),
        "--out",
        str(workdir / job.run_name("{algorithm}")),
        "--seed",
        str(job.seed),
        *TRL_VARIANTS[job.kind],
    ]
    log = open(workdir / f"{job.name}.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _summary(job: Job, workdir: Path) -> dict:
    """What the run itself reports: steps, and for prefopt the rows its data step kept."""
    out = workdir / job.run_name(job.algorithm)
    info: dict = {}
    if job.kind in PREFOPT_KINDS:
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
    trl_in_one_process: bool = False,
    progress=print,
) -> list[dict]:
    """Train and evaluate every (kind, algorithm, seed); returns one result dict per run.

    ``trl_in_one_process``: the plain-TRL runs of a seed share one process (one set of imports; each run
    is the same as alone) and start first, the longest job."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "results.jsonl"
    done = {}
    if store.exists():
        for line in store.read_text().splitlines():
            r = json.loads(line)
            done[(r["kind"], r["algorithm"], r["seed"])] = r
    wanted = [(k, a, s) for s in seeds for a in algorithms for k in kinds if applies(k, a)]
    todo = [Job(*w) for w in wanted if w not in done]
    if trl_in_one_process:
        batched: list[Job] = []
        for s in seeds:
            for k in TRL_VARIANTS:
                group = [j for j in todo if j.kind == k and j.seed == s]
                if group:
                    batched.append(Job(k, "+".join(j.algorithm for j in group), s))
        todo = batched + [j for j in todo if j.kind not in TRL_VARIANTS]
    prompts = evaluate.eval_prompts()
    running: list[tuple[Job, subprocess.Popen, float]] = []
    try:
        _loop(todo, running, world, workdir, prompts, store, done, jobs, progress)
    finally:
        for _, proc, _ in running:  # an error (or Ctrl-C) leaves no training run behind
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    return [done[w] for w in wanted]


def _loop(todo, running, world, workdir, prompts, store, done, jobs, progress) -> None:
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
                wall = round(time.time() - t0, 1)
                for algorithm in job.algorithms:
                    one = Job(job.kind, algorithm, job.seed)
                    res = {"kind": job.kind, "algorithm": algorithm, "seed": job.seed}
                    res.update(_summary(one, workdir))
                    res["wall_seconds"] = wall
                    res.update(evaluate.evaluate(workdir / one.name / "model", prompts=prompts))
                    with open(store, "a") as fh:
                        fh.write(json.dumps(res) + "\n")
                    done[(job.kind, algorithm, job.seed)] = res
                    progress(
                        f"{one.name}: sampled {res['reward_sampled']:.3f} greedy {res['reward_greedy']:.3f} "
                        f"({res['steps']} steps, {wall} s)"
                    )


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
    variants = sorted({r["kind"] for r in results} - set(KINDS))
    if variants:
        lines += ["", "| variant | sampled | greedy |", "|---|---|---|"]
        for v in variants:
            for a in algorithms:
                if cell(results, v, a):
                    lines.append(
                        f"| {a} {v} | {fmt(cell(results, v, a), rs)} | {fmt(cell(results, v, a, 'reward_greedy'), rg)} |"
                    )
    return "\n".join(lines)
