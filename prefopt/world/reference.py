"""The world's reference policy: an imperfect SFT warm start of the builtin model, built once per task
and cached, and registered as the model name ``world:<task>`` (:func:`prefopt.model.loading.register_model_source`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prefopt.core.cache import cache_root, file_lock
from prefopt.core.hashing import short_hash
from prefopt.core.runtime import torch_threads
from prefopt.data.tokenization import encode_completion, encode_prompt
from prefopt.model.loading import build_builtin, load_tokenizer, register_model_source
from prefopt.world.tasks import Task, get_task

log = logging.getLogger("prefopt")

WORLD_VERSION = 2  # bump when a task or the warm start changes: invalidates every cache
DATA_VERSION = 2  # bump when the preference data drawn from the reference changes


# ------------------------------------------------------------------------------------------- warm start
@dataclass(frozen=True)
class WarmStart:
    """The SFT warm start that makes the reference policy: noisy demonstrations, short training."""

    base: str = "tiny-arith"
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    noise: float = 0.5  # fraction of demonstrations that are near-misses
    demos: int = 20000


WARM_STARTS: dict[str, WarmStart] = {
    "arith": WarmStart(),
    "count": WarmStart(steps=250, learning_rate=3e-3, noise=0.3),
}


def reference_checkpoint(task: str, warm: WarmStart | None = None) -> Path:
    """Path of the task's SFT reference policy (safetensors), built once and cached."""
    t = get_task(task)
    warm = warm or WARM_STARTS[task]
    key = short_hash({"v": WORLD_VERSION, "task": task, "warm": asdict(warm)})
    out = cache_root() / "world" / f"{task}-ref-{key}"
    if (out / "model.safetensors").exists():
        return out
    with file_lock(out.with_suffix(".lock")):
        if (out / "model.safetensors").exists():
            return out
        log.info(
            "world: building the %s reference policy (SFT warm start, %d steps) into %s",
            task,
            warm.steps,
            out,
        )
        with torch_threads(1):
            model, tok = _sft_warm_start(t, warm)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "warm_start.json").write_text(json.dumps({"task": task, **asdict(warm)}, indent=2))
        os.replace(tmp, out)
    return out


def demonstrations(task: Task, n: int, noise: float, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    prompts = task.split("train")
    out = []
    for _ in range(n):
        p = rng.choice(prompts)
        c = task.near_miss(p, rng) if rng.random() < noise else task.answer(p)
        out.append((p, c))
    return out


def sft_sequence(tokenizer, prompt, completion) -> tuple[list[int], list[int]]:
    """SFT input ids and labels (prompt masked) — prefopt's one tokenisation, as every trainer sees it."""
    pi, ci = encode_prompt(tokenizer, prompt), encode_completion(tokenizer, prompt, completion)
    return pi + ci, [-100] * len(pi) + ci


def _sft_warm_start(task: Task, warm: WarmStart):
    tok = load_tokenizer("builtin:" + warm.base)
    model = build_builtin(warm.base, warm.seed)
    demos = demonstrations(task, warm.demos, warm.noise, warm.seed)
    encoded = [sft_sequence(tok, p, c) for p, c in demos]
    g = torch.Generator().manual_seed(warm.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=warm.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, warm.steps) / warm.steps)),
    )
    model.train()
    for step in range(warm.steps):
        idx = torch.randint(len(encoded), (warm.batch_size,), generator=g).tolist()
        batch = [encoded[i] for i in idx]
        width = max(len(x) for x, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, (x, y) in enumerate(batch):
            ids[j, : len(x)] = torch.tensor(x)
            labels[j, : len(y)] = torch.tensor(y)
            mask[j, : len(x)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0:
            log.info("world warm start step %d loss %.4f", step, loss.item())
    model.eval()
    return model, tok


register_model_source("world", reference_checkpoint)
