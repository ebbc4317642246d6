"""Which checkpoint a run resumes from, whether its training is already done, and the whole run's
training loss.

* **Intact checkpoints only.** A checkpoint counts once its completion marker exists
  (:mod:`prefopt.training.resilience`); before resuming, its files are checked too: every ``*.safetensors``
  has a readable header and exactly the size the header announces, the optimizer / scheduler / RNG
  files (torch zip archives prefopt's trainer wrote) have their central directory, and
  ``trainer_state.json`` parses. A damaged latest checkpoint (a disk that filled up, a copy cut
  short) is moved aside to ``damaged-checkpoint-N`` with a warning and the previous intact one is
  used; when none is intact the run stops with exit 2 naming the file.
* **Another recipe's checkpoint is never resumed**: each marker records the run identity
  (:func:`prefopt.pipeline.rundir.recipe_identity` + data fingerprint).
* **Training already complete** (``global_step == max_steps`` in the checkpoint, e.g. a kill after the
  last checkpoint or during evaluation): the weights, state and RNG are restored through the trainer's
  own resume path and no step runs; only saving, evaluation and the report are left.
* **The whole run's loss.** Each marker also records the sum of the per-step training losses so far
  (the trainer's own accumulators), so a resumed run reports ``train_loss`` over all its steps.
"""

from __future__ import annotations

import json
import logging
import struct
import zipfile
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from prefopt.core.errors import PrefoptError
from prefopt.training.resilience import MARKER, complete_checkpoints

log = logging.getLogger("prefopt")

TORCH_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
DAMAGED_PREFIX = "damaged-"


# ------------------------------------------------------------------------------------------ file checks
def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be loaded (cut short, header unreadable), or None."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100_000_000):
                return f"header length {n} does not fit the file's {size} bytes (cut short?)"
            header = json.loads(fh.read(n))
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    except (ValueError, UnicodeDecodeError):
        return "the header is not valid JSON (damaged)"
    if not isinstance(header, dict):
        return "the header is not a JSON object (damaged)"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            return f"tensor {name!r} has no data offsets (damaged)"
    expected = 8 + n + end
    if size != expected:
        return (
            f"{size} bytes, but its header describes {expected} (cut short)"
            if size < expected
            else (f"{size} bytes, but its header describes {expected} (trailing bytes)")
        )
    return None


def torch_archive_problem(path: Path) -> str | None:
    """Why a ``torch.save`` zip archive is damaged (no central directory: cut short), or None."""
    try:
        with zipfile.ZipFile(path) as zf:
            size = Path(path).stat().st_size
            for info in zf.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"entry {info.filename} runs past the end of the file (cut short)"
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"not a complete torch archive ({exc})"
    return None


def checkpoint_problems(ckpt: Path) -> list[tuple[Path, str]]:
    """``(file, reason)`` for every damaged or missing file the trainer would load to resume."""
    ckpt = Path(ckpt)
    out: list[tuple[Path, str]] = []
    state = ckpt / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except OSError:
        out.append((state, "missing"))
    except ValueError:
        out.append((state, "not valid JSON (cut short?)"))
    distributed = any(
        p.is_dir() and (p.name.startswith("global_step") or "fsdp" in p.name) for p in ckpt.iterdir()
    )
    weights = [ckpt / f for f in WEIGHT_FILES if (ckpt / f).exists()]
    if not weights and not distributed and not list(ckpt.glob("*.bin")):
        out.append((ckpt / "model.safetensors", "missing (no weights in the checkpoint)"))
    for f in sorted(ckpt.glob("*.safetensors")):
        why = safetensors_problem(f)
        if why:
            out.append((f, why))
    if not distributed and weights and not (ckpt / "optimizer.pt").exists():
        out.append((ckpt / "optimizer.pt", "missing (the optimizer state cannot be restored)"))
    for name in TORCH_FILES:
        f = ckpt / name
        if f.exists():
            why = torch_archive_problem(f)
            if why:
                out.append((f, why))
    return out


def check_saved_model(model_dir: Path, where: str = "--run") -> None:
    """A saved model (``<run>/model``) whose weight files are damaged or missing → exit 2 naming it."""
    model_dir = Path(model_dir)
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        raise PrefoptError(
            f"{model_dir} holds no weight files (*.safetensors).",
            where=where,
            fix="re-run the training command (it resumes and saves the model again).",
        )
    for f in sorted(model_dir.glob("*.safetensors")):
        why = safetensors_problem(f)
        if why:
            raise PrefoptError(
                f"the saved model file {f} is damaged: {why}.",
                where=where,
                fix="re-run the training command (it resumes and saves the model again), or restore the "
                "file from a copy.",
            )


# ------------------------------------------------------------------------------------------ choosing
def marker_of(ckpt: Path) -> dict[str, Any]:
    try:
        m = json.loads((Path(ckpt) / MARKER).read_text())
        return m if isinstance(m, dict) else {}
    except (OSError, ValueError):
        return {}


def move_aside(ckpt: Path) -> Path:
    """Rename a checkpoint out of the trainer's ``checkpoint-*`` namespace (kept for inspection)."""
    target = ckpt.with_name(DAMAGED_PREFIX + ckpt.name)
    n = 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"{DAMAGED_PREFIX}{n}-{ckpt.name}")
    ckpt.rename(target)
    return target


def choose_checkpoint(ckpt_dir: Path, identity: dict[str, Any] | None = None) -> Path | None:
    """The newest complete, intact checkpoint (None when there is none). Damaged ones newer than it
    are moved aside with a warning; if every complete checkpoint is damaged → exit 2 naming the file.
    A checkpoint recorded under another run identity → exit 2 (never resumed)."""
    ckpts = complete_checkpoints(ckpt_dir)
    if not ckpts:
        return None
    first_problem: tuple[Path, str] | None = None
    for ckpt in reversed(ckpts):
        _check_marker_identity(ckpt, identity)
        problems = checkpoint_problems(ckpt)
        if not problems:
            return ckpt
        first_problem = first_problem or problems[0]
        f, why = problems[0]
        moved = move_aside(ckpt)
        log.warning(
            "checkpoint %s is damaged (%s: %s); moved it to %s and falling back to the previous one",
            ckpt.name,
            f.name,
            why,
            moved.name,
        )
    assert first_problem is not None
    f, why = first_problem
    raise PrefoptError(
        f"no intact checkpoint to resume from: {f} is damaged ({why}), and so is every earlier "
        f"checkpoint (moved aside as {DAMAGED_PREFIX}checkpoint-N).",
        where=str(ckpt_dir),
        fix="restore the files from a copy, or pass --overwrite to start the run afresh.",
    )


def _check_marker_identity(ckpt: Path, identity: dict[str, Any] | None) -> None:
    if not identity:
        return
    marker = marker_of(ckpt)
    for key, label in (("identity", "recipe identity"), ("data_fingerprint", "data fingerprint")):
        recorded, now = marker.get(key), identity.get("sha256" if key == "identity" else key)
        if recorded and now and recorded != now:
            raise PrefoptError(
                f"{ckpt} was written by another recipe ({label} {recorded} → {now}); prefopt does not "
                "resume a different recipe's training.",
                where="output.dir",
                fix="pass --overwrite to start this recipe afresh there, or choose another output.dir.",
            )


def training_complete(ckpt: Path | None) -> bool:
    """The checkpoint holds the last step of its schedule (``global_step >= max_steps``)."""
    if ckpt is None:
        return False
    try:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        return int(state.get("max_steps") or 0) > 0 and int(state["global_step"]) >= int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


class TrainingAlreadyComplete(Exception):
    """Raised from ``on_train_begin`` once the trainer has restored a complete checkpoint."""


class SkipCompletedTraining(TrainerCallback):
    """Stop ``trainer.train(resume_from_checkpoint=...)`` after the restore and before any step when the
    checkpoint's schedule is complete. The trainer restores weights, optimizer, scheduler, RNG and
    state exactly as for any resume (DeepSpeed and FSDP included); nothing is trained again."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            raise TrainingAlreadyComplete(state.global_step)
        return control


def run_training(trainer, resume_from: Path | None):
    """``trainer.train`` from ``resume_from``; ``None`` instead of its output when the checkpoint's
    training was already complete (no step was run)."""
    complete = training_complete(resume_from)
    if complete:
        log.warning(
            "%s completes the training (step %s); finishing the run without training",
            resume_from,
            _step(resume_from),
        )
        trainer.callback_handler.callbacks.insert(0, SkipCompletedTraining())
    try:
        return trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except TrainingAlreadyComplete:
        return None
    finally:
        if complete:
            trainer.callback_handler.callbacks = [
                c for c in trainer.callback_handler.callbacks if not isinstance(c, SkipCompletedTraining)
            ]


def _step(ckpt: Path) -> Any:
    try:
        return json.loads((Path(ckpt) / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return "?"


# ------------------------------------------------------------------------------------------ the loss
class LossLedger:
    """The sum of per-step training losses over the whole run, across resumes.

    Uses the trainer's own accumulators (the logged part plus the part not logged yet), so an
    uninterrupted run reports exactly the trainer's ``train_loss`` and a resumed one the mean over all
    of its steps. The checkpoint markers carry the running sum (:meth:`marker_fields`)."""

    def __init__(self, identity: dict[str, Any] | None = None):
        self.identity = identity or {}
        self.trainer = None
        self.prior_sum = 0.0  # losses of the steps before the checkpoint resumed from
        self.start_step = 0

    def attach(self, trainer) -> LossLedger:
        self.trainer = trainer
        return self

    def resume_from(self, ckpt: Path | None) -> None:
        if ckpt is None:
            return
        marker = marker_of(ckpt)
        self.start_step = int(marker.get("step") or _step(ckpt) or 0)
        if "loss_sum" in marker:
            self.prior_sum = float(marker["loss_sum"])
        else:  # a checkpoint without the sum: the logged losses, weighted by the steps each covers
            self.prior_sum = logged_loss_sum(ckpt / "trainer_state.json")

    def current_sum(self) -> float | None:
        t = self.trainer
        if t is None or not hasattr(t, "_total_loss_scalar"):
            return None
        pending = getattr(t, "_tr_loss", None)
        pending = float(pending.item()) if pending is not None else 0.0
        return self.prior_sum + float(t._total_loss_scalar) + pending

    def marker_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.identity.get("sha256"):
            out["identity"] = self.identity["sha256"]
        if self.identity.get("data_fingerprint"):
            out["data_fingerprint"] = self.identity["data_fingerprint"]
        s = self.current_sum()
        if s is not None:
            out["loss_sum"] = s
        return out

    def train_loss(self, global_step: int, result) -> float:
        """Mean per-step loss over steps 1..global_step (``result`` None: nothing was trained now)."""
        resumed = 0.0
        if result is not None:
            resumed = float(result.training_loss) * max(global_step - self.start_step, 0)
        return (self.prior_sum + resumed) / max(global_step, 1)


def logged_loss_sum(state_file: Path) -> float:
    """Σ logged loss × steps it averages, from a ``trainer_state.json`` (an estimate: steps after the
    last logging step are not in it)."""
    try:
        history = json.loads(Path(state_file).read_text()).get("log_history", [])
    except (OSError, ValueError):
        return 0.0
    total, last = 0.0, 0
    for rec in history:
        if "loss" in rec and "step" in rec:
            total += float(rec["loss"]) * (int(rec["step"]) - last)
            last = int(rec["step"])
    return total
