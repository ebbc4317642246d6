"""Moved to :mod:`prefopt.evaluate.metrics`; kept for one release (import from there)."""

from prefopt.evaluate.metrics import *  # noqa: F403
from prefopt.model.generation import generate_completions, sampled_kl_and_length  # noqa: F401
from prefopt.model.logprobs import DEFAULT_BATCH_SIZE, DEFAULT_TOKEN_BUDGET, completion_logps, length_batches  # noqa: F401
from prefopt.world import heldout_pairs as world_eval_pairs  # noqa: F401
from prefopt.world import heldout_prompts as world_test_prompts  # noqa: F401
