"""Moved to :mod:`prefopt.training.refcache`; kept for one release (import from there)."""

from prefopt.training.refcache import *  # noqa: F403
