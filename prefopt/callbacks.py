"""Moved to :mod:`prefopt.training.callbacks`; kept for one release (import from there)."""

from prefopt.training.callbacks import *  # noqa: F403
