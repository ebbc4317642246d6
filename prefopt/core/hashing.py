"""Content hashes used as cache keys and fingerprints (of JSON-able objects and of datasets)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def short_hash(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of sha256 over ``obj`` as sorted-key JSON (non-JSON values as str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def dataset_fingerprint(ds) -> str:
    """Content hash of a dataset (anything with ``column_names`` and column access; order-sensitive),
    independent of where it was loaded from."""
    h = hashlib.sha256()
    for col in sorted(ds.column_names):
        h.update(col.encode())
        h.update(json.dumps(ds[col], sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]
