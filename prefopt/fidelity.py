"""Moved to :mod:`prefopt.config.fidelity`; kept for one release (import from there)."""

from prefopt.config.fidelity import *  # noqa: F403
