"""Moved to :mod:`prefopt.model.loading`; kept for one release (import from there)."""

from prefopt.model.loading import *  # noqa: F403
