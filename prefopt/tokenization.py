"""Moved to :mod:`prefopt.data.tokenization`; kept for one release (import from there)."""

from prefopt.data.tokenization import *  # noqa: F403
