"""Moved to :mod:`prefopt.config.integrations`; kept for one release (import from there)."""

from prefopt.config.integrations import *  # noqa: F403
