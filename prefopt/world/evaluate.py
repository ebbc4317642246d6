"""The world's own evaluation protocol: true reward on held-out prompts, mean length, sampled KL."""

from __future__ import annotations

import random

from prefopt.model.generation import sample
from prefopt.model.logprobs import sequence_logps
from prefopt.world.tasks import get_task


def evaluate_policy(
    model,
    tokenizer,
    task_name: str,
    *,
    reference=None,
    num_prompts: int = 300,
    samples_per_prompt: int = 4,
    seed: int = 1234,
    max_new_tokens: int = 8,
) -> dict:
    """True reward on held-out prompts (sampled at temperature 1, and greedy), mean completion length,
    and KL(policy ‖ reference) estimated on the sampled completions (mean of log π − log π_ref)."""
    task = get_task(task_name)
    rng = random.Random(seed)
    pool = task.split("test")
    prompts = pool if len(pool) <= num_prompts else rng.sample(pool, num_prompts)
    sampled = sample(
        model,
        tokenizer,
        prompts,
        num_samples=samples_per_prompt,
        temperature=1.0,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    greedy = sample(
        model, tokenizer, prompts, num_samples=1, temperature=0.0, seed=seed, max_new_tokens=max_new_tokens
    )
    flat_p = [p for p, outs in zip(prompts, sampled) for _ in outs]
    flat_c = [c for outs in sampled for c in outs]
    result = {
        "task": task_name,
        "num_prompts": len(prompts),
        "samples_per_prompt": samples_per_prompt,
        "reward_sampled": sum(task.reward(p, c) for p, c in zip(flat_p, flat_c)) / len(flat_c),
        "reward_greedy": sum(task.reward(p, g[0]) for p, g in zip(prompts, greedy)) / len(prompts),
        "mean_length": sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in flat_c)
        / len(flat_c),
    }
    if reference is not None:
        lp = sequence_logps(model, tokenizer, flat_p, flat_c)
        lr = sequence_logps(reference, tokenizer, flat_p, flat_c)
        result["kl_to_reference"] = float((lp - lr).mean())
    return result
