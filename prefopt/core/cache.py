"""Where prefopt caches things (the world's reference and data, reference log-probs), and a file lock.

One root for every cache: ``$PREFOPT_CACHE``, else ``~/.cache/prefopt``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    """``$PREFOPT_CACHE``, else ``~/.cache/prefopt``."""
    root = os.environ.get("PREFOPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prefopt")
    return Path(root).expanduser()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive ``fcntl.flock`` on ``path`` for the block (released by the OS if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
