"""Moved to :mod:`prefopt.training.losses`; kept for one release (import from there)."""

from prefopt.training.algorithms import LOSS_FUNCTIONS  # noqa: F401
from prefopt.training.losses import *  # noqa: F403
