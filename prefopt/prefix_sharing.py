"""Moved to :mod:`prefopt.training.prefix_sharing`; kept for one release (import from there)."""

from prefopt.training.prefix_sharing import *  # noqa: F403
