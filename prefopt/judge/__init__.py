"""Layer 6: judges — score a (prompt, reply) or give a verdict per pair: a Python callable
(:mod:`~prefopt.judge.callable_judge`), a reward model (:mod:`~prefopt.judge.reward_model`; the RLHF
baseline's scorer in :mod:`~prefopt.judge.scorers`), a local LLM asked pairwise in both orders
(:mod:`~prefopt.judge.llm`), an ensemble; agreement statistics, win rate and the generate-and-judge
pipeline. See :mod:`prefopt.judge.base` for the interface and the ``judge:`` block, and docs/judges.md."""

from prefopt.judge.base import Judge, Verdict, build_judge, judge_types, parse_judge_config, tally

__all__ = ["Judge", "Verdict", "build_judge", "judge_types", "parse_judge_config", "tally"]
