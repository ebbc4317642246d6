"""Shared test fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests. The tiny models train faster on one thread, far
    faster on a shared, loaded CPU (OpenMP spinning), and the quickstart guards train exactly as their
    lifts were measured (one thread)."""
    from prefopt.core.runtime import torch_threads

    with torch_threads(1):
        yield
