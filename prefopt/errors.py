"""Moved to :mod:`prefopt.core.errors`; kept for one release (import from there)."""

from prefopt.core.errors import *  # noqa: F403
