"""Interrupted runs resume exactly; a kill while saving never leaves a corrupt 'latest'; non-finite
losses stop training with the last good checkpoint intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from prefopt.training.resilience import MARKER, complete_checkpoints, last_complete_checkpoint

REPO = Path(__file__).resolve().parents[2]
DPO = REPO / "configs" / "recipes" / "quickstart" / "dpo.yaml"
ARGS = [
    "--set",
    "training.max_steps=8",
    "--set",
    "training.save_steps=2",
    "--set",
    "training.logging_steps=1",
    "--set",
    "training.per_device_train_batch_size=8",
    "--set",
    "training.warmup_steps=0",
    "--set",
    "data.train.0.size=48",
    "--set",
    "evaluation.enabled=false",
]


def _cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prefopt.cli",
        "train",
        "--config",
        str(DPO),
        "--output-dir",
        str(out),
        *ARGS,
        *extra,
    ]


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(out, *extra), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )


def _start_and_signal(out: Path, sig: int, after_step: int) -> subprocess.CompletedProcess:
    """Start a run, wait until checkpoint-<after_step> is complete, then send `sig`."""
    proc = subprocess.Popen(
        _cmd(out), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    target = out / "checkpoints" / f"checkpoint-{after_step}" / MARKER
    deadline = time.time() + 300
    while not target.exists():
        if proc.poll() is not None or time.time() > deadline:
            out_, err = proc.communicate()
            pytest.fail(f"run ended before checkpoint-{after_step}: {err[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _steps(out: Path) -> list[int]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in recs if "loss" in r]


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = (
        load_file(str(a / "model" / "model.safetensors")),
        load_file(str(b / "model" / "model.safetensors")),
    )
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "straight"
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_to_identical_weights(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    killed = _start_and_signal(out, signal.SIGKILL, after_step=4)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "model").exists()
    # re-running the same command continues from the last complete checkpoint
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    assert _max_diff(out, uninterrupted) <= 1e-6
    assert _steps(out) == list(range(1, 9))  # no gap, no duplicate step


@pytest.mark.slow
def test_sigterm_saves_exits_143_and_resume_flag_continues(uninterrupted, tmp_path):
    out = tmp_path / "term"
    proc = _start_and_signal(out, signal.SIGTERM, after_step=2)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "interrupted by signal 15" in proc.stderr and "--resume" in proc.stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    assert last_complete_checkpoint(out / "checkpoints") is not None
    proc = _run(out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _max_diff(out, uninterrupted) <= 1e-6
    assert _steps(out) == list(range(1, 9))


def test_incomplete_checkpoint_is_never_latest(tmp_path):
    ck = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        d = ck / f"checkpoint-{step}"
        d.mkdir(parents=True)
        if complete:
            (d / MARKER).write_text("{}")
    assert last_complete_checkpoint(ck) == ck / "checkpoint-4"
    assert [p.name for p in complete_checkpoints(ck)] == ["checkpoint-2", "checkpoint-4"]


def test_nonfinite_loss_stops_with_last_checkpoint_intact(tmp_path, monkeypatch, capsys):
    """A loss that turns NaN at step 5 stops training; checkpoint-4 stays the latest and loads."""
    import torch

    from prefopt import cli
    from prefopt.training.trainers import PrefoptDPOTrainer

    original = PrefoptDPOTrainer.compute_loss

    def poisoned(self, model, inputs, *a, **k):
        loss = original(self, model, inputs, *a, **k)
        return loss * float("nan") if self.state.global_step >= 4 else loss

    monkeypatch.setattr(PrefoptDPOTrainer, "compute_loss", poisoned)
    out = tmp_path / "nan"
    code = cli.main(["train", "--config", str(DPO), "--output-dir", str(out), *ARGS])
    err = capsys.readouterr().err
    assert code == 3
    assert "step 5" in err and "non-finite" in err and "learning rate" in err
    assert last_complete_checkpoint(out / "checkpoints").name == "checkpoint-4"
    assert not (out / "model").exists()
    state = load_file(str(out / "checkpoints" / "checkpoint-4" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
