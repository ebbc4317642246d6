"""Preference data drawn from the world's reference policy, the ``world`` data source, and what a recipe
says about the world (:func:`task_of`).

From a recipe: ``data: {train: [{source: world, task: arith, size: 2000}]}``.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict

from datasets import Dataset

from prefopt.core.cache import cache_root, file_lock
from prefopt.core.errors import PrefoptError, did_you_mean
from prefopt.core.hashing import short_hash
from prefopt.data.registry import register_source
from prefopt.data.schema import compute_prompt_id
from prefopt.model.generation import sample
from prefopt.model.loading import load_trained
from prefopt.world.reference import DATA_VERSION, WARM_STARTS, WORLD_VERSION, reference_checkpoint
from prefopt.world.tasks import Task, get_task


def preference_rows(
    task_name: str,
    size: int,
    *,
    split: str = "train",
    seed: int = 0,
    num_samples: int = 4,
    noise: float = 0.0,
    kind: str = "paired",
    pairs_per_prompt: int = 1,
) -> list[dict]:
    """Preference data drawn from the reference policy (cached on disk).

    ``size`` prompts are drawn from the task's training split; for each, ``num_samples`` completions
    are sampled from the reference at temperature 1. Paired: up to ``pairs_per_prompt`` pairs, each a
    correct answer (a correct sample, or the true answer when none was correct) against a distinct
    wrong sample (a near-miss when none was wrong); with Bradley-Terry ``noise`` the sides of a pair
    swap with that probability. Unpaired: the same pairs, each as a desirable row (the correct
    answer) and an undesirable row (the wrong one), so the labels are balanced; with ``noise`` a pair's
    labels swap with that probability.
    """
    task = get_task(task_name)
    key = short_hash(
        {
            "v": WORLD_VERSION,
            "data_v": DATA_VERSION,
            "task": task_name,
            "size": size,
            "split": split,
            "seed": seed,
            "k": num_samples,
            "noise": noise,
            "kind": kind,
            "ppp": pairs_per_prompt,
            "warm": asdict(WARM_STARTS[task_name]),
        }
    )
    path = cache_root() / "world" / f"{task_name}-data-{key}.jsonl"
    if path.exists():
        return [json.loads(line) for line in path.read_text().splitlines()]
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            return [json.loads(line) for line in path.read_text().splitlines()]
        rows = _draw_rows(task, size, split, seed, num_samples, noise, kind, pairs_per_prompt)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    return rows


def _draw_rows(task: Task, size, split, seed, num_samples, noise, kind, pairs_per_prompt) -> list[dict]:
    rng = random.Random(seed)
    pool = task.split(split)
    prompts = [rng.choice(pool) for _ in range(size)]
    model, tok = load_trained(reference_checkpoint(task.name))
    samples = sample(model, tok, prompts, num_samples=num_samples, temperature=1.0, seed=seed)
    rows: list[dict] = []
    source = f"world:{task.name}"
    for p, outs in zip(prompts, samples):
        pid = compute_prompt_id(p)
        distinct = list(dict.fromkeys(outs))
        good = [c for c in distinct if task.reward(p, c) > 0]
        bad = [c for c in distinct if task.reward(p, c) == 0 and c.strip()]
        chosen = good[0] if good else task.answer(p)
        rejected_all = bad[:pairs_per_prompt] or [task.near_miss(p, rng)]
        if kind == "unpaired":
            # the unpaired view of the same pairs (as KTO's paper compares): one desirable and one
            # undesirable row per pair, so the labels are balanced (prefopt's default weights: 1.33 : 1)
            for rejected in rejected_all:
                flip = noise > 0 and rng.random() < noise
                rows.append(
                    {
                        "prompt": p,
                        "completion": chosen,
                        "label": not flip,
                        "prompt_id": pid,
                        "source": source,
                        "score": None if noise > 0 else 1.0,
                    }
                )
                rows.append(
                    {
                        "prompt": p,
                        "completion": rejected,
                        "label": flip,
                        "prompt_id": pid,
                        "source": source,
                        "score": None if noise > 0 else 0.0,
                    }
                )
            continue
        for rejected in rejected_all:
            c, r = chosen, rejected
            if noise > 0 and rng.random() < noise:
                c, r = r, c
            # scores are the observed labels' (1 vs 0); with label noise they are unknown to the learner
            sc, sr = (None, None) if noise > 0 else (1.0, 0.0)
            rows.append(
                {
                    "prompt": p,
                    "chosen": c,
                    "rejected": r,
                    "prompt_id": pid,
                    "source": source,
                    "score_chosen": sc,
                    "score_rejected": sr,
                }
            )
    return rows


def preference_dataset(task: str, size: int = 2000, **kw):
    return Dataset.from_list(preference_rows(task, size, **kw))


# ------------------------------------------------------------------------------------------- data source
@register_source("world")
def read_world(spec: dict, *, base_dir=None, seed: int = 0, report=None):
    """The ground-truth world as a data source: {source: world, task: arith, size: 2000,
    kind: paired|unpaired, noise: 0.0, num_samples: 4, pairs_per_prompt: 1, split: train}."""
    allowed = {
        "task",
        "size",
        "kind",
        "noise",
        "num_samples",
        "pairs_per_prompt",
        "split",
        "seed",
        "max_rows",
        "path",
    }
    unknown = set(spec) - allowed - {"source"}
    if unknown:
        name = sorted(unknown)[0]
        raise PrefoptError(
            f'unknown option "{name}" for source world.{did_you_mean(name, allowed)} '
            f"Allowed: {', '.join(sorted(allowed - {'path', 'max_rows'}))}.",
            where="data.train",
        )
    rows = preference_rows(
        spec.get("task") or "arith",
        int(spec.get("size") or 2000),
        split=spec.get("split") or "train",
        seed=int(spec.get("seed", seed)),
        num_samples=int(spec.get("num_samples") or 4),
        pairs_per_prompt=int(spec.get("pairs_per_prompt") or 1),
        noise=float(spec.get("noise") or 0.0),
        kind=spec.get("kind") or "paired",
    )
    return Dataset.from_list(rows)


# ------------------------------------------------------------------------------------------- recipes
def task_of(recipe) -> str | None:
    """The world task a recipe trains on (its first ``source: world``), or None when its data is not the
    world's."""
    for src in recipe.data.train:
        if src.source == "world":
            return src.options.get("task") or "arith"
    return None


def heldout_pairs(task: str, n: int, seed: int):
    """Held-out preference pairs from the ground-truth world (its test prompts, never trained on)."""
    return preference_dataset(task, size=n, split="test", seed=seed)


def heldout_prompts(task: str, n: int, seed: int) -> list[str]:
    """Up to ``n`` of the task's held-out prompts (a seeded sample when there are more)."""
    pool = get_task(task).split("test")
    rng = random.Random(seed)
    return pool if len(pool) <= n else rng.sample(pool, n)
