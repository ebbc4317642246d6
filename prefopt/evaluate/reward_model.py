"""Evaluation of a trained reward model (``algorithm: reward``; ``eval.json`` at the end of ``prefopt train``
and from ``prefopt eval --run``). A reward model is not a policy: nothing is sampled from it and it has no
KL; what matters is whether its scalar ranks replies the way the truth does.

``preference`` — on held-out pairs (the recipe's eval split, ``--data FILE``, or for the ground-truth world
without one, pairs from the world's held-out prompts, as :func:`prefopt.evaluate.metrics.evaluate_models`
uses): ``accuracy`` = fraction of pairs with r(chosen) > r(rejected) (``ties`` counted apart, never as
right), ``reward_margin`` = mean r(chosen) − r(rejected), the mean rewards, and ``kappa`` — Cohen's κ of its
verdicts against the labels with each pair's order drawn at random (seeded; :func:`prefopt.judge.agreement.agreement`).

``true_reward`` — when the data comes from the ground-truth world: agreement with the **true reward** as
a judge would be used, on pairs of replies sampled from the starting policy (two per held-out prompt,
``evaluation.world_prompts`` prompts, temperature ``evaluation.temperature``). Pairs of two identical
replies are left out (every judge ties them; they would inflate κ) and counted. Both judges give a
verdict per remaining pair (a, b, or tie when the scores are equal) and ``kappa``/``agreement`` compare
them, ties included (the true reward ties two wrong answers; a reward model rarely ties, so κ counts
those pairs against it); ``accuracy_where_decided`` is the reward model's accuracy on the pairs the
true reward decides.

Sequences are scored as the model was trained (:class:`prefopt.judge.reward_model.RewardModelJudge`:
``encode_prompt + encode_completion``, EOS included).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from prefopt.core.errors import PrefoptError
from prefopt.core.files import write_json
from prefopt.judge.agreement import agreement
from prefopt.judge.base import verdict_from_scores
from prefopt.judge.reward_model import RewardModelJudge, RewardModelSection, load_reward_model
from prefopt.model.generation import sample
from prefopt.model.loading import load_reference
from prefopt.world import get_task, heldout_pairs, heldout_prompts, task_of

DEFAULT_MAX_PAIRS = 1000
DEFAULT_WORLD_PROMPTS = 300


def evaluate_reward_model(
    model,
    tokenizer,
    recipe,
    eval_ds=None,
    *,
    data_source: str | None = None,
    world_prompts: int | None = None,
) -> dict:
    """The ``eval.json`` of a reward model: ``preference`` (held-out pairs), ``true_reward`` (κ against the
    true reward on sampled pairs, for world data), ``summary``."""
    ev = recipe.evaluation
    task = task_of(recipe)
    judge = RewardModelJudge(model.eval(), tokenizer, name="reward model", batch_size=ev.batch_size)
    result: dict[str, Any] = {
        "algorithm": recipe.algorithm,
        "reward_definition": "r(x, y): the reward model's scalar head on prompt + reply + EOS",
        "notes": [],
    }
    source = data_source or ("recipe eval split" if eval_ds is not None else None)
    if eval_ds is None and task is not None:
        eval_ds = heldout_pairs(task, ev.max_pairs or DEFAULT_MAX_PAIRS, recipe.seed)  # no sampling cost
        source = f"world:{task} held-out prompts (no eval split in the recipe)"
    if eval_ds is not None and len(eval_ds) and "chosen" not in eval_ds.column_names:
        raise PrefoptError(
            "a reward model is evaluated on pairs (prompt, chosen, rejected), but the held-out rows are unpaired.",
            where=data_source or "data.eval",
            fix="evaluate on a file of pairs (--data FILE with prompt, chosen, rejected).",
        )
    with torch.no_grad():
        if eval_ds is None or not len(eval_ds):
            result["notes"].append("no held-out pairs: pass --data FILE, set data.eval_fraction or data.eval")
            result["preference"] = None
        else:
            n = min(len(eval_ds), ev.max_pairs or DEFAULT_MAX_PAIRS)
            if n < len(eval_ds):
                result["notes"].append(
                    f"pair accuracy on the first {n} held-out pairs (evaluation.max_pairs)"
                )
            pairs = eval_ds.select(range(n))
            result["preference"] = {"source": source, **pair_metrics(judge, pairs, recipe.seed)}
        if task is not None:
            n_prompts = int(world_prompts or ev.world_prompts or DEFAULT_WORLD_PROMPTS)
            result["true_reward"] = true_reward_agreement(judge, recipe, task, n_prompts)
    result["summary"] = summary_of(result)
    return result


def pair_metrics(judge: RewardModelJudge, pairs, seed: int = 0) -> dict[str, Any]:
    """Accuracy, margin and κ (random order per pair) of the reward model on canonical pairs."""
    prompts = list(pairs["prompt"])
    n = len(prompts)
    scores = judge.score(prompts * 2, list(pairs["chosen"]) + list(pairs["rejected"]))
    rc, rr = scores[:n], scores[n:]
    right = sum(1 for c, r in zip(rc, rr) if c > r)
    ties = sum(1 for c, r in zip(rc, rr) if c == r)
    rng = random.Random(seed)
    labels, verdicts = [], []
    for c, r in zip(rc, rr):  # show each pair as (a, b) in a random order: the label is where chosen sits
        if rng.random() < 0.5:
            labels.append("a")
            verdicts.append(verdict_from_scores(c, r))
        else:
            labels.append("b")
            verdicts.append(verdict_from_scores(r, c))
    stats = agreement(verdicts, labels)
    return {
        "pairs": n,
        "accuracy": right / n,
        "ties": ties,
        "reward_chosen": sum(rc) / n,
        "reward_rejected": sum(rr) / n,
        "reward_margin": sum(c - r for c, r in zip(rc, rr)) / n,
        "kappa": stats["kappa"],
    }


def true_reward_agreement(judge: RewardModelJudge, recipe, task: str, n_prompts: int) -> dict[str, Any]:
    """κ and agreement of the reward model with the world's true reward on pairs of replies sampled from
    the starting policy (two per held-out prompt)."""
    ev = recipe.evaluation
    world_task = get_task(task)
    prompts = heldout_prompts(task, n_prompts, recipe.seed)
    policy = load_reference(recipe.model, seed=recipe.seed)
    replies = sample(
        policy,
        judge.tokenizer,
        prompts,
        num_samples=2,
        temperature=ev.temperature if ev.temperature > 0 else 1.0,
        seed=recipe.seed,
    )
    del policy
    distinct = [(p, r[0], r[1]) for p, r in zip(prompts, replies) if r[0] != r[1]]
    prompts = [p for p, _, _ in distinct]
    a = [x for _, x, _ in distinct]
    b = [y for _, _, y in distinct]
    truth = [
        verdict_from_scores(world_task.reward(p, x), world_task.reward(p, y))
        for p, x, y in zip(prompts, a, b)
    ]
    ours = judge.compare(prompts, a, b)
    stats = agreement(ours, truth)
    decided = [(o.winner, t.winner) for o, t in zip(ours, truth) if t.winner in ("a", "b")]
    return {
        "pairs_from": f"world:{task} held-out prompts, 2 replies each sampled from {recipe.model.name}",
        "prompts": len(replies),
        "identical_pairs_excluded": len(replies) - len(distinct),
        "pairs": len(distinct),
        "agreement": stats["agreement"],
        "kappa": stats["kappa"],
        "confusion": stats.get("confusion", {}),
        "true_reward_ties": sum(1 for t in truth if t.winner == "tie"),
        "decided_by_true_reward": len(decided),
        "accuracy_where_decided": (sum(o == t for o, t in decided) / len(decided)) if decided else None,
    }


def summary_of(result: dict) -> dict[str, Any]:
    pref = result.get("preference") or {}
    world = result.get("true_reward") or {}
    return {
        "preference_accuracy": pref.get("accuracy"),
        "reward_margin": pref.get("reward_margin"),
        "kappa_heldout_pairs": pref.get("kappa"),
        "kappa_true_reward": world.get("kappa"),
        "agreement_true_reward": world.get("agreement"),
        "accuracy_where_true_reward_decides": world.get("accuracy_where_decided"),
    }


def evaluate_reward_run(
    run_dir: Path, recipe, eval_ds, *, data_source: str | None, world_prompts: int | None, write: bool
) -> dict:
    """``prefopt eval --run`` for a reward model's run: its ``model/`` loaded as the reward-model judge does."""
    model, tokenizer = load_reward_model(
        RewardModelSection(path=str(run_dir / "model")), where="--run", base_dir=None
    )
    result = evaluate_reward_model(
        model, tokenizer, recipe, eval_ds, data_source=data_source, world_prompts=world_prompts
    )
    result["run_dir"] = str(run_dir)
    if write:
        write_json(run_dir / "eval.json", result)
    return result
