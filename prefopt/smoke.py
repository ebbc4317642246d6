"""Moved to :mod:`prefopt.config.smoke`; kept for one release (import from there)."""

from prefopt.config.smoke import *  # noqa: F403
