"""Moved to :mod:`prefopt.training.algorithms`; kept for one release (import from there)."""

from prefopt.training.algorithms import *  # noqa: F403
