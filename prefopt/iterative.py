"""Moved to :mod:`prefopt.studies.iterative`; kept for one release (import from there)."""

from prefopt.judge.scorers import load_callable  # noqa: F401
from prefopt.studies.iterative import *  # noqa: F403
from prefopt.world import world_reward  # noqa: F401
