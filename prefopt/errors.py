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
    """Raised after a clean checkpoint when SIGTERM/SIGINT arrived (exit code 130 / 143)."""

    def __init__(self, signum: int, checkpoint: str | None):
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"interrupted by signal {signum}; checkpoint: {checkpoint}")


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """Return ' Did you mean "x"?' for the closest option, or '' when nothing is close."""
    options = list(options)
    match = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    if not match:  # "alpa" → "lora_alpha": compare with the parts of snake_case names too
        parts = {part: opt for opt in options for part in str(opt).split("_") if len(part) > 2}
        close = difflib.get_close_matches(str(word), list(parts), n=1, cutoff=0.75)
        match = [parts[close[0]]] if close else []
    return f' Did you mean "{match[0]}"?' if match else ""
