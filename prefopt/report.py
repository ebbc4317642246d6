"""Moved to :mod:`prefopt.evaluate.report`; kept for one release (import from there)."""

from prefopt.evaluate.report import *  # noqa: F403
