"""Judges (callable, reward model, LLM pairwise, ensemble), agreement statistics and win rate.

See :mod:`prefopt.judge.base` for the interface and the ``judge:`` block, and docs/judges.md."""

from prefopt.judge.base import Judge, Verdict, build_judge, judge_types, parse_judge_config, tally

__all__ = ["Judge", "Verdict", "build_judge", "judge_types", "parse_judge_config", "tally"]
