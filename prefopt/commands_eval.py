"""Moved to :mod:`prefopt.cli.evaluate`; kept for one release (import from there)."""

from prefopt.cli.evaluate import *  # noqa: F403
