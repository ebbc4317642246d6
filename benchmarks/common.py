"""Shared pieces of the benchmarks: data with UltraFeedback-like length spread, the builtin small-25m
weights on disk (so plain TRL can load them), worker subprocesses with pinned threads, alternating A/B
timing with medians, and the result line every benchmark prints.

Every benchmark compares two things in one run, alternating A and B and taking medians, and prints
``RESULT {json}`` as its last line (``run_all.py`` collects those). Workers run in fresh interpreters
with ``OMP_NUM_THREADS=1`` (the same for A and B) so that one side's memory or thread state never leaks
into the other; only the region that differs is timed (imports are not).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODEL = "small-25m"
SEED = 0

WORDS = (
    "the of and to in is that for it as with was on be by this are or from at an not but have which "
    "you can will if their more one all would there has been model data we use when each also into "
    "function return value example error code python list string number should first time new may "
    "answer question because however therefore important consider different following provide"
).split()


# ------------------------------------------------------------------------------------------ environment
def pin_threads(n: int = 1) -> None:
    """``n`` intra-op threads (the same for A and B): timings on a shared machine stay comparable."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only allowed once, before any parallel work
        pass


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TQDM_DISABLE="1",
        PYTHONWARNINGS="ignore",
        TRANSFORMERS_VERBOSITY="error",
        ACCELERATE_USE_CPU="true",
    )
    env.setdefault("PREFOPT_CACHE", str(Path(tempfile.gettempdir()) / "prefopt-bench-cache"))
    env.update(extra)
    return env


def machine() -> dict[str, Any]:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers
    import trl

    info.update(transformers=transformers.__version__, trl=trl.__version__)
    return info


# ------------------------------------------------------------------------------------------ data and model
def _loguniform(rng: random.Random, lo: float, hi: float) -> int:
    return max(1, int(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def text_pairs(n: int, seed: int = 0, scale: float = 0.05) -> list[dict[str, str]]:
    """``n`` plain-text pairs whose lengths follow UltraFeedback's spread scaled by ``scale``: prompt
    100–1,500 characters, chosen and rejected 200–4,000 each, log-uniform and independent (as
    ``benchmarks/data.py`` generates them). The builtin tokenizer is byte-level: ~1 token per character."""
    rng = random.Random(seed)

    def text(lo: float, hi: float) -> str:
        k = _loguniform(rng, lo * scale, hi * scale)
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < k:
            words.append(rng.choice(WORDS))
        return " ".join(words)[:k].strip() or "x"

    return [
        {"prompt": text(100, 1500), "chosen": text(200, 4000), "rejected": text(200, 4000)} for _ in range(n)
    ]


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


def model_dir(root: Path, key: str = MODEL, seed: int = SEED) -> Path:
    """``build_builtin(key, seed)`` saved with its tokenizer, so that plain TRL loads (and copies, for
    its reference) exactly the weights prefopt builds in memory."""
    d = root / f"{key}-seed{seed}"
    if (d / "config.json").exists():
        return d
    from prefopt.model.loading import build_builtin, load_tokenizer

    model = build_builtin(key, seed)
    model.save_pretrained(d, safe_serialization=True)
    load_tokenizer(f"builtin:{key}").save_pretrained(d)
    return d


# ------------------------------------------------------------------------------------------ prefopt wiring
def batching_off() -> None:
    """prefopt without the split forward and without length grouping: exactly TRL's work per step."""
    from prefopt.training.batching import LengthGroupingMixin

    LengthGroupingMixin._split_enabled = lambda self: False
    LengthGroupingMixin._length_grouping_on = lambda self, ds: False


def prefopt_recipe(
    data_path: Path,
    out_dir: Path,
    *,
    algorithm: str = "dpo",
    batch: int,
    steps: int | None = None,
    epochs: float | None = None,
    max_length: int,
    beta: float = 0.1,
    lora: dict | None = None,
    cache_dir: Path | None = None,
    seed: int = SEED,
    training: dict[str, Any] | None = None,
):
    from prefopt.config.recipe import Recipe

    training = {
        "per_device_train_batch_size": batch,
        "learning_rate": 1e-5,
        "max_length": max_length,
        "logging_steps": 1,
        "lr_scheduler_type": "constant",
        **(training or {}),
    }
    if steps is not None:
        training["max_steps"] = steps
    if epochs is not None:
        training["num_train_epochs"] = epochs
    model: dict[str, Any] = {"name": f"builtin:{MODEL}"}
    if lora:
        model["lora"] = lora
    data = {
        "algorithm": algorithm,
        "seed": seed,
        "model": model,
        "data": {"train": [{"source": "jsonl", "path": str(data_path)}], "shuffle": False, "dedupe": False},
        "loss": {"beta": beta},
        "training": training,
        "output": {"dir": str(out_dir), "save_model": False, "overwrite": True},
        "evaluation": {"enabled": False},
    }
    if cache_dir is not None:
        data["reference_cache"] = {"enabled": True, "dir": str(cache_dir)}
    return Recipe(**data)


def trl_dpo_config(
    out_dir: Path,
    *,
    batch: int,
    steps: int | None = None,
    epochs: float | None = None,
    max_length: int,
    beta: float = 0.1,
    precompute: bool = False,
    seed: int = SEED,
):
    """The plain TRL config with the same settings prefopt gives TRL (no gradient checkpointing, fp32)."""
    from trl import DPOConfig

    kw: dict[str, Any] = dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=batch,
        learning_rate=1e-5,
        max_length=max_length,
        logging_steps=1,
        lr_scheduler_type="constant",
        beta=beta,
        report_to="none",
        save_strategy="no",
        bf16=False,
        gradient_checkpointing=False,
        seed=seed,
        data_seed=seed,
        precompute_ref_log_probs=precompute,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if steps is not None:
        kw["max_steps"] = steps
    if epochs is not None:
        kw["num_train_epochs"] = epochs
    return DPOConfig(**kw)


def trl_sft_config(out_dir: Path, *, batch_pairs: int, max_length: int, **extra: Any):
    """The SFT side of a DPO-vs-SFT comparison: the same settings as :func:`trl_dpo_config` (fp32, no
    gradient checkpointing, lr 1e-5), ``2 × batch_pairs`` sequences per step (chosen + rejected), loss on
    the completion tokens only."""
    from trl import SFTConfig

    kw: dict[str, Any] = dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=2 * batch_pairs,
        learning_rate=1e-5,
        max_length=max_length,
        report_to="none",
        save_strategy="no",
        bf16=False,
        gradient_checkpointing=False,
        completion_only_loss=True,
        disable_tqdm=True,
        seed=SEED,
    )
    return SFTConfig(**{**kw, **extra})


# ------------------------------------------------------------------------------------------ running
def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children. On a shared, loaded machine
    wall time includes waiting for a core; CPU time counts only the work, so it is the steadier
    measure of cost (both are reported)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def step_timer():
    """A TrainerCallback recording each optimizer step's wall and CPU seconds."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.wall, self.cpu = [], []

        def on_step_begin(self, args, state, control, **kw):
            self._w, self._c = time.perf_counter(), cpu_seconds()

        def on_step_end(self, args, state, control, **kw):
            self.wall.append(time.perf_counter() - self._w)
            self.cpu.append(cpu_seconds() - self._c)

    return StepTimer()


def run_worker(
    script: Path, args: list[str], env: dict[str, str] | None = None, timeout: int = 3600
) -> dict[str, Any]:
    """Run ``script --worker ...`` in a fresh interpreter; its last stdout line is a JSON object."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or worker_env(),
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {script.name} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    return json.loads(lines[-1])


def alternate(
    a, b, reps: int, label_a: str = "A", label_b: str = "B", verbose: bool = True
) -> tuple[list, list]:
    """Run a() and b() alternately (A, B, B, A, A, B, …: ABBA order cancels a linear drift in load)."""
    ra, rb = [], []
    for i in range(reps):
        order = (a, b) if i % 2 == 0 else (b, a)
        for f in order:
            t0 = time.perf_counter()
            r = f()
            (ra if f is a else rb).append(r)
            if verbose:
                print(
                    f"  rep {i + 1}/{reps} {label_a if f is a else label_b}: {summarize(r)} "
                    f"({time.perf_counter() - t0:.0f}s wall)",
                    flush=True,
                )
    return ra, rb


def summarize(r: Any) -> str:
    if isinstance(r, dict):
        return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
    return str(r)


def median(xs) -> float:
    return float(statistics.median(xs))


def report(
    name: str, ratio: float, target: float, extra: dict[str, Any] | None = None, lower_is_better: bool = True
) -> dict:
    met = ratio <= target if lower_is_better else ratio >= target
    res = {"benchmark": name, "ratio": round(ratio, 4), "target": target, "met": bool(met), **(extra or {})}
    print(
        f"\n{name}: ratio {ratio:.3f} (target {'≤' if lower_is_better else '≥'} {target}) → {'MET' if met else 'NOT MET'}"
    )
    print("RESULT " + json.dumps(res, default=str), flush=True)
    return res


def cached_dpo_trainer(recipe, tok, tok_ds, output_dir: Path, **trainer_kwargs):
    """prefopt's DPO trainer on ``tok_ds`` with the reference log-probs precomputed through the recipe's
    reference cache (the first trainer computes and stores them, the others read them), builtin
    weights seeded as every side of a benchmark; ``trainer_kwargs``: ``split_forward``, ``prefix_sharing``."""
    import prefopt.training.trainers as T
    from prefopt.model.loading import build_builtin
    from prefopt.training import refcache
    from prefopt.training.algorithms import get_adapter

    config = get_adapter("dpo").trl_config(recipe, output_dir=str(output_dir))
    config.precompute_ref_log_probs = True
    return T.PrefoptDPOTrainer(
        model=build_builtin(MODEL, SEED),
        args=config,
        train_dataset=tok_ds,
        processing_class=tok,
        **trainer_kwargs,
        **refcache.trainer_kwargs(recipe),
    )
