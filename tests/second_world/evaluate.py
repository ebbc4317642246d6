"""The independent evaluator: plain ``transformers`` ``generate`` on a fixed set of held-out prompts.

Every model of the study — the SFT reference, each ``prefopt train`` output (``<run>/model``) and each
plain-TRL output — is loaded the same way (``AutoModelForCausalLM`` / ``AutoTokenizer`` from its
directory) and scored the same way: ``samples`` replies per prompt sampled at temperature 1 from a
fixed seed (no top-k, no top-p), plus the greedy reply; the true reward is the task's exact-match
reward (:func:`second_world.task.reward`). Prompts are encoded the way the SFT model was trained on
them (the tokenizer's own special tokens: BOS + prompt) and grouped by length, so no batch is padded.

No prefopt code is used here.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import torch

from . import task

EVAL_PROMPTS = 400
EVAL_SAMPLES = 4
EVAL_SEED = 1234
MAX_NEW_TOKENS = 8


def eval_prompts(n: int = EVAL_PROMPTS, seed: int = EVAL_SEED) -> list[str]:
    """The fixed evaluation set: ``n`` held-out prompts drawn with ``seed``."""
    return random.Random(seed).sample(task.split("test"), n)


@torch.no_grad()
def generate_replies(
    model,
    tokenizer,
    prompts: list[str],
    *,
    num_samples: int,
    temperature: float,
    seed: int,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 512,
) -> list[list[str]]:
    """``num_samples`` decoded replies per prompt (``temperature`` 0: greedy, one reply)."""
    model.eval()
    by_len: dict[int, list[int]] = defaultdict(list)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        by_len[len(ids)].append(i)
    out: list[list[str]] = [[] for _ in prompts]
    torch.manual_seed(seed)
    sampling = temperature > 0
    k = num_samples if sampling else 1
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_return_sequences=k,
    )
    if sampling:
        kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        kwargs.update(do_sample=False)
    for length in sorted(by_len):
        idx = by_len[length]
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            ids = torch.tensor([encoded[i] for i in chunk])
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
            new = gen[:, length:]
            for j, row in enumerate(new.tolist()):
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                out[chunk[j // k]].append(tokenizer.decode(row, skip_special_tokens=True))
    return out


def load(model_dir: str | Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model, tokenizer


def evaluate(
    model_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    prompts: list[str] | None = None,
    samples: int = EVAL_SAMPLES,
    seed: int = EVAL_SEED,
) -> dict:
    """True reward of the model in ``model_dir``: sampled (T = 1) and greedy, on the fixed prompts."""
    from transformers import AutoTokenizer

    model, tokenizer = load(model_dir)
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    prompts = prompts if prompts is not None else eval_prompts()
    sampled = generate_replies(model, tokenizer, prompts, num_samples=samples, temperature=1.0, seed=seed)
    greedy = generate_replies(model, tokenizer, prompts, num_samples=1, temperature=0.0, seed=seed)
    flat = [(p, c) for p, cs in zip(prompts, sampled) for c in cs]
    lengths = [len(c.split()) for _, c in flat]
    return {
        "reward_sampled": sum(task.reward(p, c) for p, c in flat) / len(flat),
        "reward_greedy": sum(task.reward(p, g[0]) for p, g in zip(prompts, greedy)) / len(prompts),
        "mean_reply_letters": sum(lengths) / len(lengths),
        "wrong_length": sum(len(c.split()) != len(task.letters_of(p)) for p, c in flat) / len(flat),
        "num_prompts": len(prompts),
        "samples_per_prompt": samples,
    }
