"""The run directory: resolved recipe, manifest (versions, git commit, seed, data fingerprint,
hardware), metrics.jsonl. Written by rank 0 only."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from prefopt.core.errors import PrefoptError
from prefopt.core.files import write_json  # noqa: F401 - manifest.write_json, used by the run's writers

FINISHED_MARKER = "manifest.json"


def resolve_run_dir(template: str, *, algorithm: str, seed: int, base: Path | None = None) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(template.format(algorithm=algorithm, seed=seed, timestamp=stamp)).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def is_finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / FINISHED_MARKER).read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def prepare_run_dir(run_dir: Path, *, overwrite: bool, resume: bool = False) -> None:
    if is_finished(run_dir) and not overwrite and not resume:
        raise PrefoptError(
            f"the output directory {run_dir} already holds a finished run.",
            where="output.dir",
            fix="choose another output.dir, or pass --overwrite (or set output.overwrite: true) to replace it.",
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out = {}
    for pkg in ("prefopt", "torch", "trl", "transformers", "peft", "datasets", "accelerate", "bitsandbytes"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def hardware() -> dict[str, Any]:
    import torch

    hw: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return hw
