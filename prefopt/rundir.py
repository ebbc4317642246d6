"""Moved to :mod:`prefopt.pipeline.rundir`; kept for one release (import from there)."""

from prefopt.pipeline.rundir import *  # noqa: F403
