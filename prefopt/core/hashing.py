"""Content hashes used as cache keys and fingerprints."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def short_hash(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of sha256 over ``obj`` as sorted-key JSON (non-JSON values as str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
