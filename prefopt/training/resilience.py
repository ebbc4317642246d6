"""Never lose work, never hide a problem: clean stops on SIGTERM/SIGINT, complete-checkpoint markers,
resume from the last complete checkpoint, and a guard that stops on a non-finite loss or gradient.

* A checkpoint counts as complete only when ``prefopt_complete.json`` exists in it. The marker is
  written after transformers has finished writing the checkpoint (``on_save``), to a temporary name and
  renamed, so a kill at any moment of saving leaves the previous complete checkpoint as "latest".
* SIGTERM/SIGINT (preemption, Ctrl-C) ask the trainer to save and stop at the end of the current step;
  ``prefopt train`` then exits with 143/130 and says how to resume. A second signal exits at once.
* A non-finite loss or gradient norm stops training *before* the optimizer step that would apply it is
  saved: the last complete checkpoint stays intact and the message names the step, the term and fixes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from prefopt.core.errors import Interrupted, NonFiniteError  # noqa: F401 - re-exported

log = logging.getLogger("prefopt")

MARKER = "prefopt_complete.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_dir() and (p / MARKER).exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def last_complete_checkpoint(folder: Path) -> Path | None:
    ckpts = complete_checkpoints(folder)
    return ckpts[-1] if ckpts else None


def remove_incomplete_checkpoints(folder: Path) -> list[str]:
    """Delete checkpoint dirs without the completion marker (a kill during saving); returns their names."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if _CKPT.match(p.name) and p.is_dir() and not (p / MARKER).exists():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


class CheckpointMarkerCallback(TrainerCallback):
    """Write the completion marker into each checkpoint once transformers has finished saving it.
    ``extra()`` adds fields to it (the run identity and the loss so far, :class:`prefopt.training.resume.LossLedger`)."""

    def __init__(self, extra=None):
        self.extra = extra

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not ckpt.is_dir():
            return
        tmp = ckpt / (MARKER + ".tmp")
        extra = self.extra() if self.extra is not None else {}
        tmp.write_text(json.dumps({"step": state.global_step, "epoch": state.epoch, **extra}))
        os.replace(tmp, ckpt / MARKER)


class SignalCallback(TrainerCallback):
    """Turn SIGTERM/SIGINT into 'save a checkpoint and stop' at the end of the current step."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread (e.g. some notebook runners)
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.received is not None:  # second signal: stop now (an "interrupted" manifest, no traceback)
            raise Interrupted(signum)
        self.received = signum
        log.warning(
            "received %s: saving a checkpoint at the end of this step, then stopping "
            "(send it again to stop immediately)",
            signal.Signals(signum).name,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


class NonFiniteGuard(TrainerCallback):
    """Stop when the logged loss or gradient norm is NaN/inf.

    Checked at every step (``logging_steps`` does not matter): transformers keeps the running loss on
    the trainer; the guard reads the last logged values and the gradient norm of each step."""

    def __init__(self):
        self.tripped: tuple[int, str, object] | None = None

    def _check(self, state, control, values: dict):
        for term, v in values.items():
            if isinstance(v, (int, float)) and not math.isfinite(v):
                self.tripped = (state.global_step, term, v)
                control.should_training_stop = True
                control.should_save = False
                log.error(
                    "non-finite %s (%s) at step %d: stopping without saving", term, v, state.global_step
                )
                return

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and self.tripped is None:
            self._check(
                state,
                control,
                {k: v for k, v in logs.items() if k in ("loss", "grad_norm", "kl", "eval_loss")},
            )
        return control

    def on_step_end(self, args, state, control, **kwargs):
        # after transformers' flow callback: a save step that tripped the guard saves nothing (the step
        # ran on zeroed gradients, so its weights are not the last good ones)
        if self.tripped is not None:
            control.should_save = False
            control.should_training_stop = True
        return control

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        model = kwargs.get("model")
        if model is None or self.tripped is not None:
            return control
        total = 0.0
        for p in model.parameters():
            if p.grad is not None:
                total += float(p.grad.detach().float().pow(2).sum())
        if not math.isfinite(total):
            self.tripped = (state.global_step + 1, "gradient norm", total)
            control.should_training_stop = True
            control.should_save = False
            # zero the gradients so the optimizer step that follows changes nothing
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.zero_()
            log.error(
                "non-finite gradient before step %d: stopping without applying it", state.global_step + 1
            )
        return control
