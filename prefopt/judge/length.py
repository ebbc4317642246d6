"""Length and judges: a length penalty on any score judge, the judge of an online recipe, and a length-biased
reward for studying what a judge that likes long replies does to a policy.

* :class:`LengthPenaltyJudge` — ``score − α · tokens(reply)``: the defence against a judge that rewards
  length (reward models and LLM judges usually do; docs/judges.md "Biases to expect"). Tokens are counted
  with the policy's tokenizer (``encode`` of the reply alone, no special tokens), or characters without one.
  A failed inner score stays failed.
* :func:`online_judge` — the judge an online recipe trains against: ``online.judge`` built (errors name
  ``online.judge``), wrapped in the length penalty when ``online.length_penalty`` > 0.
* :func:`length_biased_reward` — a callable-judge function: another scorer's score plus ``bonus`` per reply
  token (characters by default), e.g. the world's true reward with a length bias (docs/compare.md)::

      judge: {type: callable, function: "prefopt.judge.length:length_biased_reward",
              kwargs: {function: "prefopt.world:TASKS.arith.reward", bonus: 0.1}}
"""

from __future__ import annotations

from typing import Any

from prefopt.judge.base import Judge, build_judge
from prefopt.judge.callable_judge import resolve_function


def reply_length(reply: Any, tokenizer=None) -> int:
    """Tokens of a reply on its own (characters when there is no tokenizer)."""
    text = reply if isinstance(reply, str) else str(reply)
    if tokenizer is None:
        return len(text)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def length_penalised(scores, replies, alpha: float, tokenizer=None) -> list[float | None]:
    """``score − alpha · tokens(reply)`` for each score (a failed score, None, stays None): the penalty of
    :class:`LengthPenaltyJudge`, also applied by iterative DPO to its scorer (:mod:`prefopt.studies.iterative`)."""
    return [None if s is None else s - alpha * reply_length(r, tokenizer) for s, r in zip(scores, replies)]


class LengthPenaltyJudge(Judge):
    """``inner``'s score minus ``alpha`` per reply token (``tokenizer``: the policy's; None: characters)."""

    type = "length_penalty"

    def __init__(self, inner: Judge, alpha: float, *, tokenizer=None, where: str = "judge"):
        super().__init__(
            f"length_penalty({inner.name}, α={alpha:g})", where=where, tie_margin=inner.tie_margin
        )
        if alpha < 0:
            raise ValueError("alpha must be ≥ 0")
        self.inner = inner
        self.alpha = float(alpha)
        self.tokenizer = tokenizer

    def score(self, prompts, replies, *, indices=None) -> list[float | None]:
        base = self.inner.score(prompts, replies, indices=indices)
        return length_penalised(base, replies, self.alpha, self.tokenizer)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "alpha": self.alpha,
            "unit": "tokens" if self.tokenizer is not None else "characters",
            "judge": self.inner.describe(),
        }


def online_judge(
    online, *, tokenizer=None, base_dir: str | None = None, where: str = "online.judge"
) -> Judge:
    """The judge of an ``online:`` recipe block (:class:`prefopt.config.recipe.OnlineSection`)."""
    judge = build_judge(online.judge, where=where, base_dir=base_dir)
    if online.length_penalty > 0:
        judge = LengthPenaltyJudge(
            judge, online.length_penalty, tokenizer=tokenizer, where="online.length_penalty"
        )
    return judge


def recipe_judge(recipe, tokenizer=None) -> Judge | None:
    """The judge of an online recipe (None for an offline one), built before the policy loads so that a bad
    ``online.judge`` block exits 2 first."""
    if recipe.online is None:
        return None
    base = str(recipe.source_path.parent) if recipe.source_path is not None else None
    return online_judge(recipe.online, tokenizer=tokenizer, base_dir=base)


_RESOLVED: dict[str, Any] = {}


def length_biased_reward(prompt: Any, reply: Any, *, function: str, bonus: float = 0.1) -> float:
    """``function(prompt, reply) + bonus · len(reply)`` (characters): a judge with a known length bias."""
    fn = _RESOLVED.get(function)
    if fn is None:
        fn = _RESOLVED[function] = resolve_function(function, where="judge.kwargs.function")
    text = reply if isinstance(reply, str) else str(reply)
    return float(fn(prompt, reply)) + float(bonus) * len(text.strip())
