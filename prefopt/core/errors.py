"""User-facing errors.

Every problem a user can fix (a wrong YAML key, a malformed row, a missing file) is raised as a
:class:`PrefoptError` whose message is one paragraph naming the file, the field or row, what was
expected, and the fix. The CLI prints that paragraph and exits with status 2; ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrefoptError(Exception):
    """An error caused by the user's input, with a message written for people."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.where = where
        self.fix = fix
        parts = []
        if where:
            parts.append(f"{where}:")
        parts.append(message.rstrip())
        if fix:
            parts.append(f"Fix: {fix.rstrip()}")
        super().__init__(" ".join(parts))


class TrainingInterrupted(Exception):
    """Raised after a clean checkpoint when SIGTERM/SIGINT arrived (exit code 128 + signal: 143 / 130)."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum = signum
        self.checkpoint = checkpoint
        self.exit_code = 128 + signum
        super().__init__(
            f"training interrupted by signal {signum}; the last complete checkpoint is {checkpoint}. "
            "Re-run the same command (or add --resume) to continue from it."
        )


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest option, or '' when nothing is close."""
    options = list(options)
    match = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    if not match:  # "alpa" → "lora_alpha": compare with the parts of snake_case names too
        parts = {part: opt for opt in options for part in str(opt).split("_") if len(part) > 2}
        close = difflib.get_close_matches(str(word), list(parts), n=1, cutoff=0.75)
        match = [parts[close[0]]] if close else []
    return f' Did you mean "{match[0]}"?' if match else ""


class NonFiniteError(Exception):
    """Training stopped on a NaN/inf loss or gradient (exit code 3); the last checkpoint is intact."""

    exit_code = 3

    def __init__(self, step: int, term: str, value, checkpoint):
        self.step, self.term, self.value, self.checkpoint = step, term, value, checkpoint
        where = (
            f"the last complete checkpoint ({checkpoint}) is intact"
            if checkpoint
            else "no checkpoint had been saved yet"
        )
        super().__init__(
            f"training stopped at step {step}: {term} became {value} (non-finite); {where}. "
            "Likely causes: a learning rate too high for the model (try 2-10x lower), bf16/fp16 overflow "
            "(try float32 or bf16 instead of fp16), log-probs of empty or fully truncated completions, or a "
            "β so small that the log-ratios explode. Fix the cause and re-run with --resume."
        )


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM outside the training loop's clean stop (data work, evaluation, a second signal):
    the run ends at once; :func:`prefopt.pipeline.rundir.session` writes an "interrupted" manifest and turns it
    into :class:`TrainingInterrupted` (exit 128 + signal)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signum)
