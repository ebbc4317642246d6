"""Judged evaluation (``prefopt eval --judge``): the policy's win rate against its reference (or another
run) on held-out prompts, and perplexity on held-out chosen replies.

**Win rate.** On the held-out prompts the sampling metrics use (the held-out pairs' prompts, else the
world's test prompts; at most ``evaluation.max_prompts``), both models sample
``evaluation.num_samples`` replies per prompt at ``evaluation.temperature`` with the transformers
engine and the same seed, so sample i of the policy and sample i of the reference draw from the same
random stream. Sample i of the policy (position a) is judged against sample i of the other model
(:func:`prefopt.judge.winrate.win_rate`): win rate, ties, losses, no-verdict counts, the
length-controlled win rate (lengths in tokens, before EOS) and percentile-bootstrap intervals. A score
judge also gives each side's mean score (``score``): with the world's true reward as judge that is
the true reward of each model on those samples.

**Perplexity** of held-out chosen replies: exp(−Σ log p / Σ tokens) over the chosen replies of the
held-out pairs (token-weighted), for the policy and the reference — a coherence check: a policy that
drifts into degenerate text makes good replies less likely.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from prefopt.judge.winrate import win_rate
from prefopt.model.engines import build_engine
from prefopt.world import heldout_prompts

DEFAULT_N_BOOT = 1000


def perplexity(logps, lengths) -> float | None:
    """exp(−Σ logps / Σ lengths) (token-weighted over sequences), or None without tokens."""
    tokens = float(lengths.sum())
    if tokens <= 0:
        return None
    return float(math.exp(-float(logps.sum()) / tokens))


def judged_prompts(pairs, task: str | None, max_prompts: int, seed: int) -> tuple[list[Any], str]:
    """The held-out prompts the sampling metrics use: the pairs' distinct prompts (a seeded sample of
    ``max_prompts`` when there are more), else the world's test prompts."""
    if pairs is not None:
        seen: dict[str, Any] = {}
        for p in pairs["prompt"]:
            seen.setdefault(json.dumps(p, sort_keys=True), p)
        prompts = list(seen.values())
        if len(prompts) > max_prompts:
            prompts = random.Random(seed).sample(prompts, max_prompts)
        return prompts, "held-out pairs' prompts"
    if task is not None:
        return heldout_prompts(task, max_prompts, seed), f"world:{task} test prompts"
    return [], "none"


def judged_section(
    policy,
    other,
    tokenizer,
    recipe,
    judge,
    pairs,
    task: str | None,
    *,
    against: str = "reference",
    n_boot: int = DEFAULT_N_BOOT,
) -> dict[str, Any]:
    """Win rate of ``policy`` (position a) against ``other`` judged by ``judge`` (see the module
    docstring). Returns the ``judged`` section of eval.json."""
    ev, seed = recipe.evaluation, recipe.seed
    prompts, origin = judged_prompts(pairs, task, ev.max_prompts, seed)
    out: dict[str, Any] = {
        "judge": judge.describe(),
        "against": against,
        "prompts_from": origin,
        "num_prompts": len(prompts),
        "samples_per_prompt": ev.num_samples,
        "temperature": ev.temperature,
        "max_new_tokens": ev.max_new_tokens,
        "length_unit": "tokens",
    }
    if not prompts:
        out["note"] = "no held-out prompts: pass --data FILE, or set data.eval_fraction or data.eval"
        return out
    pol, ref = (
        sample_replies(
            model,
            tokenizer,
            prompts,
            k=ev.num_samples,
            temperature=ev.temperature,
            max_new_tokens=ev.max_new_tokens,
            seed=seed,
            batch_size=ev.batch_size,
        )
        for model in (policy, other)
    )
    res, verdicts = judge_replies(judge, prompts, pol, ref, k=ev.num_samples, seed=seed, n_boot=n_boot)
    out["win_rate"] = res.as_dict()
    scored = [v.scores for v in verdicts if v.scores is not None and None not in v.scores]
    if scored and getattr(judge, "gives_scores", False):
        sp = sum(s[0] for s in scored) / len(scored)
        sr = sum(s[1] for s in scored) / len(scored)
        out["score"] = {"policy": sp, "other": sr, "lift": sp - sr, "pairs": len(scored)}
    return out


def sample_replies(
    model, tokenizer, prompts, *, k: int, temperature: float, max_new_tokens: int, seed: int, batch_size=None
) -> list:
    """``k`` replies per prompt from ``model`` (the transformers engine), flat: prompt-major, sample i of
    each prompt at position ``prompt * k + i``; the same seed gives every model the same random streams."""
    options = {} if batch_size is None else {"batch_size": batch_size}
    engine = build_engine("transformers", model=model, tokenizer=tokenizer, **options)
    rows = engine.generate(prompts, k=k, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    return [c for row in rows for c in row]


def judge_replies(judge, prompts, pol: list, ref: list, *, k: int, seed: int, n_boot: int = DEFAULT_N_BOOT):
    """Sample i of ``pol`` (position a) against sample i of ``ref`` (both from :func:`sample_replies` on
    ``prompts``, ``k`` each): :func:`prefopt.judge.winrate.win_rate` with reply lengths in tokens."""
    return win_rate(
        judge,
        [p for p in prompts for _ in range(k)],
        [c.text for c in pol],
        [c.text for c in ref],
        lengths=([c.length for c in pol], [c.length for c in ref]),
        n_boot=n_boot,
        seed=seed,
    )


def judged_summary(result: dict) -> dict[str, Any]:
    """The judged headline numbers for eval.json's summary (empty without a judged section)."""
    j = result.get("judged") or {}
    wr = j.get("win_rate") or {}
    out: dict[str, Any] = {}
    if wr:
        out["win_rate"] = wr.get("win_rate")
        out["lc_win_rate"] = wr.get("lc_win_rate")
        out["win_rate_ties"] = wr.get("ties")
    if j.get("score"):
        out["judge_score_lift"] = j["score"]["lift"]
    return out
