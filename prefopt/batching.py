"""Moved to :mod:`prefopt.training.batching`; kept for one release (import from there)."""

from prefopt.training.batching import *  # noqa: F403
