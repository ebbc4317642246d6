"""Shared test fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Tests mirror the package's folders, and some reuse another folder's helpers by module name
# (``from test_bad_input import _recipe``): every test folder is importable, which the rule that test
# basenames are unique across tests/ makes safe.
for _folder in sorted(Path(__file__).resolve().parent.iterdir()):
    if _folder.is_dir() and any(_folder.glob("test_*.py")) and not (_folder / "__init__.py").exists():
        sys.path.append(str(_folder))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests. The tiny models train faster on one thread, far
    faster on a shared, loaded CPU (OpenMP spinning), and the quickstart guards train exactly as their
    lifts were measured (one thread)."""
    from prefopt.core.runtime import torch_threads

    with torch_threads(1):
        yield
