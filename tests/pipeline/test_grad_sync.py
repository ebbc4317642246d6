"""After one step on 2 processes over gloo, every trainer prefopt uses (DPO, IPO, KTO, ORPO, SimPO) applies
the same gradient on rank 0 and rank 1, equal to the 1-process gradient on the same global batch.

The bug class: trl#7245, where TRL's DPO/KTO skipped DDP's gradient sync with the Liger kernel, so
each rank stepped on its own half of the batch. ``dpo-nosync`` (the DPO step under DDP's ``no_sync``)
is the negative control that shows this comparison catches it. One launch runs all five trainers
(scripts/grad_sync_check.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "grad_sync_check.py"
ALGORITHMS = ["dpo", "ipo", "kto", "orpo", "simpo"]
TRAINERS = {
    "dpo": "PrefoptDPOTrainer",
    "ipo": "PrefoptDPOTrainer",
    "kto": "PrefoptKTOTrainer",
    "orpo": "PrefoptORPOTrainer",
    "simpo": "PrefoptCPOTrainer",
}

pytestmark = pytest.mark.distributed


def _one_process(out: Path) -> dict:
    spec = importlib.util.spec_from_file_location("grad_sync_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(out)]) == 0
    return torch.load(out / "grads-rank0-of-1.pt")


def _two_processes(out: Path) -> tuple[dict, dict]:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / "multi_cpu.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        "29527",
        str(SCRIPT),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out / "grads-rank0-of-2.pt"), torch.load(out / "grads-rank1-of-2.pt")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.usefixtures("one_torch_thread")
def test_every_trainer_syncs_gradients_across_two_processes(tmp_path):
    one = _one_process(tmp_path / "one")
    r0, r1 = _two_processes(tmp_path / "two")
    assert set(one) == set(ALGORITHMS) and set(r0) == set(r1) == {*ALGORITHMS, "dpo-nosync"}

    for algorithm in ALGORITHMS:
        g1, g0, gr1 = one[algorithm]["grads"], r0[algorithm]["grads"], r1[algorithm]["grads"]
        assert r0[algorithm]["trainer"] == one[algorithm]["trainer"] == TRAINERS[algorithm]
        # every trainable parameter received a gradient, and the step is not a no-op
        assert len(g1) == 29 and g0.keys() == g1.keys()
        scale = max(float(g.abs().max()) for g in g1.values())
        assert scale > 1e-3, (algorithm, scale)
        # DDP all-reduces: both ranks hold the very same gradient ...
        assert all(torch.equal(g0[k], gr1[k]) for k in g0), (algorithm, _max_diff(g0, gr1))
        # ... the 1-process gradient of the same global batch (float reordering only)
        assert _max_diff(g0, g1) <= 1e-5 * scale, (algorithm, _max_diff(g0, g1), scale)
        assert r0[algorithm]["loss"] == pytest.approx(one[algorithm]["loss"], abs=1e-6)

    # negative control: without the all-reduce, each rank keeps its own half-batch gradient
    c0, c1 = r0["dpo-nosync"]["grads"], r1["dpo-nosync"]["grads"]
    scale = max(float(g.abs().max()) for g in one["dpo"]["grads"].values())
    assert _max_diff(c0, c1) > 0.05 * scale
    assert _max_diff(c0, one["dpo"]["grads"]) > 0.05 * scale
