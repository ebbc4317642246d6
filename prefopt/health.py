"""Moved to :mod:`prefopt.training.health`; kept for one release (import from there)."""

from prefopt.training.health import *  # noqa: F403
