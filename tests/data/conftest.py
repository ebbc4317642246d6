"""Fixtures for the data-layer tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    from prefopt.model.loading import load_tokenizer

    return load_tokenizer("builtin:tiny-arith")


@pytest.fixture(autouse=True, scope="session")
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    yield
