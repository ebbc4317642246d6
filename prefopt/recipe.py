"""Moved to :mod:`prefopt.config.recipe`; kept for one release (import from there)."""

from prefopt.config.algorithms import LOSS_CLASSES, DPOLoss, IPOLoss, KTOLoss, ORPOLoss, SimPOLoss  # noqa: F401
from prefopt.config.recipe import *  # noqa: F403
