"""One training lifecycle: :func:`fit` runs a built trainer and returns a :class:`FitResult`.

Every training run in prefopt goes through it — ``prefopt train`` (:mod:`prefopt.pipeline.run`), each
point of ``prefopt compare``, each round of iterative DPO, the RLHF baseline's reward model and policy —
so they share one policy for what can go wrong:

* **Non-finite loss or gradient** (:class:`~prefopt.training.resilience.NonFiniteGuard`): training stops
  before the step that would apply it is saved, so the last complete checkpoint stays the last good one;
  the run is marked ``failed`` (``FitResult.status``), a ``{"event": "nonfinite", ...}`` record goes to
  metrics.jsonl, and :meth:`FitResult.raise_for_status` raises :class:`~prefopt.core.errors.NonFiniteError`
  (the CLI exits 3). Callers never save or evaluate a failed run's weights.
* **SIGTERM/SIGINT** (``handle_signals=True``): a checkpoint is saved at the end of the step and training
  stops; ``status`` is ``interrupted`` and ``raise_for_status`` raises
  :class:`~prefopt.core.errors.TrainingInterrupted` (exit 128 + signal).
* **Checkpoints** (``checkpoints=`` the trainer's output dir): each one gets its completion marker
  (:class:`~prefopt.training.resilience.CheckpointMarkerCallback`; ``marker_extra`` adds the run identity
  and the loss so far, :class:`~prefopt.training.resume.LossLedger`), and ``FitResult.checkpoint`` is the
  last complete one.
* **A checkpoint that completes the training** (resumed after a kill during the final save or the
  evaluation): its weights and state are restored and no step runs
  (:func:`~prefopt.training.resume.run_training`); ``FitResult.output`` is then None.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prefopt.core.errors import NonFiniteError, TrainingInterrupted
from prefopt.training.resilience import (
    CheckpointMarkerCallback,
    NonFiniteGuard,
    SignalCallback,
    last_complete_checkpoint,
)
from prefopt.training.resume import run_training


@dataclass
class FitResult:
    """What a training run ended with."""

    status: Literal["finished", "failed", "interrupted"]
    trainer: Any
    global_step: int
    train_loss: float | None
    train_s: float
    nonfinite: tuple[int, str, Any] | None = None  # (step, term, value) when the guard stopped training
    signal: int | None = None  # the signal that interrupted it
    checkpoint: Path | None = None  # the last complete checkpoint, when checkpoints were kept
    output: Any = None  # the trainer's TrainOutput (None when the checkpoint had completed the training)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def model(self):
        """The trained model, unwrapped from accelerate/DeepSpeed."""
        return self.trainer.accelerator.unwrap_model(self.trainer.model)

    @property
    def error(self) -> str | None:
        """One line for a point table or a manifest: why the run did not finish."""
        if self.nonfinite is not None:
            step, term, _ = self.nonfinite
            return f"non-finite {term} at step {step}"
        if self.signal is not None:
            return f"interrupted by signal {self.signal}"
        return None

    def record(self) -> dict[str, Any]:
        """The failure as a JSON-able dict (``{"step", "term", "value"}``), or None."""
        if self.nonfinite is None:
            return None
        step, term, value = self.nonfinite
        return {"step": step, "term": term, "value": str(value)}

    def raise_for_status(self) -> FitResult:
        """Raise :class:`NonFiniteError` (exit 3) or :class:`TrainingInterrupted` unless finished."""
        if self.nonfinite is not None:
            step, term, value = self.nonfinite
            raise NonFiniteError(step, term, value, self.checkpoint)
        if self.signal is not None:
            raise TrainingInterrupted(self.signal, str(self.checkpoint) if self.checkpoint else None)
        return self


def fit(
    trainer,
    *,
    checkpoints: Path | None = None,
    resume_from: Path | None = None,
    handle_signals: bool = False,
    metrics_writer: Callable[[dict], None] | None = None,
    marker_extra: Callable[[], dict[str, Any]] | None = None,
) -> FitResult:
    """Train ``trainer`` (any transformers/TRL trainer) under prefopt's lifecycle and return the result.

    ``checkpoints`` is the directory the trainer saves checkpoints in (marked complete as they are
    written); ``resume_from`` a complete checkpoint to continue from; ``handle_signals`` turns
    SIGTERM/SIGINT into a clean save-and-stop; ``metrics_writer`` (``MetricsJsonlCallback.write``)
    receives the ``nonfinite`` event; ``marker_extra()`` adds fields to each checkpoint's marker. Never raises for a non-finite loss: see :meth:`FitResult.raise_for_status`.
    """
    guard = NonFiniteGuard()
    if checkpoints is not None:
        trainer.add_callback(CheckpointMarkerCallback(extra=marker_extra))
    signals = SignalCallback() if handle_signals else None
    if signals is not None:
        trainer.add_callback(signals)
        signals.install()
    trainer.add_callback(guard)
    t0 = time.perf_counter()
    try:
        result = run_training(trainer, resume_from)  # None: the checkpoint had completed the training
    finally:
        if signals is not None:
            signals.uninstall()
    train_s = time.perf_counter() - t0
    last = last_complete_checkpoint(checkpoints) if checkpoints is not None else None
    out = FitResult(
        status="finished",
        trainer=trainer,
        global_step=trainer.state.global_step,
        train_loss=getattr(result, "training_loss", None),
        train_s=train_s,
        checkpoint=last,
        output=result,
    )
    if guard.tripped is not None:
        out.status, out.nonfinite = "failed", guard.tripped
        step, term, value = guard.tripped
        if metrics_writer is not None and trainer.accelerator.is_main_process:
            metrics_writer({"event": "nonfinite", "step": step, "term": term, "value": str(value)})
    elif signals is not None and signals.received is not None:
        out.status, out.signal = "interrupted", signals.received
    return out
