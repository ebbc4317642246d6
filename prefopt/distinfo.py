"""Moved to :mod:`prefopt.training.distinfo`; kept for one release (import from there)."""

from prefopt.training.distinfo import *  # noqa: F403
