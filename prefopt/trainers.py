"""Moved to :mod:`prefopt.training.trainers`; kept for one release (import from there)."""

from prefopt.model.logprobs import model_logps  # noqa: F401
from prefopt.training.trainers import *  # noqa: F403
