"""Moved to :mod:`prefopt.training.resume`; kept for one release (import from there)."""

from prefopt.training.resume import *  # noqa: F403
