"""Moved to :mod:`prefopt.pipeline.manifest`; kept for one release (import from there)."""

from prefopt.pipeline.manifest import *  # noqa: F403
