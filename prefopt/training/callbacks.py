"""Trainer callbacks: metrics.jsonl (rank 0)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback


class MetricsJsonlCallback(TrainerCallback):
    """Append every log record (step, epoch and TRL's metrics) to ``metrics.jsonl`` on rank 0.

    On resume, records at or after the resumed step are dropped first so the file has no gap or
    duplicate step."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        start = state.global_step
        kept = []
        if start > 0:  # resuming: keep what was logged up to the checkpoint
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= start:
                        kept.append(line)
                except ValueError:
                    continue
        self.path.write_text("".join(k + "\n" for k in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        rec = {"step": state.global_step, "epoch": state.epoch}
        for k, v in logs.items():
            if isinstance(v, float) and not math.isfinite(v):
                rec[k] = str(v)
            else:
                rec[k] = v
        self.write(rec)

    def write(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")
