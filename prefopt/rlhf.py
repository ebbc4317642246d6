"""Moved to :mod:`prefopt.studies.rlhf`; kept for one release (import from there)."""

from prefopt.judge.scorers import RewardModelScorer, load_reward_model  # noqa: F401
from prefopt.studies.rlhf import *  # noqa: F403
from prefopt.training.build import starting_checkpoint as _starting_checkpoint  # noqa: F401
from prefopt.world import TrueReward  # noqa: F401
