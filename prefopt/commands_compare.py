"""Moved to :mod:`prefopt.cli.compare`; kept for one release (import from there)."""

from prefopt.cli.compare import *  # noqa: F403
