"""Moved to :mod:`prefopt.training.resilience`; kept for one release (import from there)."""

from prefopt.training.resilience import *  # noqa: F403
