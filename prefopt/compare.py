"""Moved to :mod:`prefopt.studies.compare`; kept for one release (import from there)."""

from prefopt.data.tokenized import TokenizedCache  # noqa: F401
from prefopt.studies.compare import *  # noqa: F403
