"""The ground-truth world: tasks whose true reward is computable, an imperfect SFT reference policy,
preference data drawn from it, and true-reward evaluation.

The classic study in miniature: SFT model → preference pairs → DPO (or IPO, KTO, ORPO, SimPO) →
compare the true reward of samples before and after. Everything ships as code; nothing is downloaded.

Tasks
-----
``arith``  two-number addition, ``"37+48="`` → ``"85"``; reward 1 for the exact answer.
``count``  a format/length-constrained answer: ``"count a 7:"`` → ``"aaaaaaa"``; reward 1 for exactly
           that many copies of the letter (off-by-one lengths are the typical mistake).

Held-out prompts are a fixed, hash-defined part of each task's prompt space, never used for the
warm start or for preference data.

From Python::

    from prefopt import world
    ref = world.reference_checkpoint("arith")            # builds + caches the SFT reference once
    pairs = world.preference_dataset("arith", size=2000)  # canonical paired rows (text format)
    world.evaluate_policy(model, tokenizer, "arith")      # {"reward_sampled": ..., "reward_greedy": ...}

From a recipe: ``model: {name: world:arith}`` and ``data: {train: [{source: world, task: arith, size: 2000}]}``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from prefopt.errors import PrefoptError, did_you_mean

log = logging.getLogger("prefopt")

WORLD_VERSION = 2  # bump when a task or the warm start changes: invalidates every cache
DATA_VERSION = 2  # bump when the preference data drawn from the reference changes


# ------------------------------------------------------------------------------------------- tasks
class Task:
    name: str

    def all_prompts(self) -> list[str]:
        raise NotImplementedError

    def answer(self, prompt: str) -> str:
        raise NotImplementedError

    def near_miss(self, prompt: str, rng: random.Random) -> str:
        raise NotImplementedError

    def reward(self, prompt: str, completion: str) -> float:
        return 1.0 if completion.strip() == self.answer(prompt) else 0.0

    def split(self, split: str) -> list[str]:
        """'train' or 'test' prompts: a fixed 15% of the prompt space is held out (by hash)."""
        out = []
        for p in self.all_prompts():
            held = int(hashlib.sha256(f"{self.name}|{p}".encode()).hexdigest(), 16) % 100 < 15
            if (split == "test") == held:
                out.append(p)
        return out


class ArithTask(Task):
    name = "arith"

    def __init__(self, max_operand: int = 49):
        self.max_operand = max_operand

    def all_prompts(self) -> list[str]:
        n = self.max_operand
        return [f"{a}+{b}=" for a in range(n + 1) for b in range(n + 1)]

    def answer(self, prompt: str) -> str:
        a, b = prompt.rstrip("=").split("+")
        return str(int(a) + int(b))

    def near_miss(self, prompt: str, rng: random.Random) -> str:
        true = int(self.answer(prompt))
        delta = rng.choice([-10, -2, -1, 1, 2, 10])
        wrong = true + delta
        return str(wrong if wrong >= 0 else true + abs(delta))


class CountTask(Task):
    name = "count"
    letters = "abcdefgh"

    def all_prompts(self) -> list[str]:
        return [f"count {c} {n}:" for c in self.letters for n in range(1, 13)]

    def answer(self, prompt: str) -> str:
        _, c, n = prompt.rstrip(":").split(" ")
        return c * int(n)

    def near_miss(self, prompt: str, rng: random.Random) -> str:
        _, c, n = prompt.rstrip(":").split(" ")
        k = max(1, int(n) + rng.choice([-2, -1, 1, 2]))
        if k == int(n):
            k += 1
        return c * k


TASKS: dict[str, Task] = {"arith": ArithTask(), "count": CountTask()}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise PrefoptError(
            f'unknown world task "{name}".{did_you_mean(name, TASKS)} Tasks: {", ".join(TASKS)}.',
            where="world task",
        )
    return TASKS[name]


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


def cache_root() -> Path:
    root = os.environ.get("PREFOPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prefopt")
    return Path(root)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (None: leave them), restoring them afterwards.

    The world's model is tiny: on 2 cores a second OpenMP thread makes its training several times
    slower (a DPO quickstart: 12 s with one thread, 108 s with two), and the results do not depend on
    it (the warm start gives the same reference with one thread and with two)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def reference_checkpoint(task: str, warm: WarmStart | None = None) -> Path:
    """Path of the task's SFT reference policy (safetensors), built once and cached."""
    t = get_task(task)
    warm = warm or WARM_STARTS[task]
    key = _key({"v": WORLD_VERSION, "task": task, "warm": asdict(warm)})
    out = cache_root() / "world" / f"{task}-ref-{key}"
    if (out / "model.safetensors").exists():
        return out
    with _file_lock(out.with_suffix(".lock")):
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
    from prefopt.tokenization import encode_completion, encode_prompt

    pi, ci = encode_prompt(tokenizer, prompt), encode_completion(tokenizer, prompt, completion)
    return pi + ci, [-100] * len(pi) + ci


def _sft_warm_start(task: Task, warm: WarmStart):
    from prefopt.models import build_builtin, load_tokenizer

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


# ------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[str],
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 8,
    seed: int = 0,
    batch_size: int = 256,
) -> list[list[str]]:
    """Completions for each prompt (text, EOS removed), generated from exactly the prompt ids training
    used: :func:`prefopt.evaluation.generate_completions`, decoded."""
    from prefopt.evaluation import generate_completions

    out: list[list[str]] = [[] for _ in prompts]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    samples = generate_completions(
        model,
        tokenizer,
        prompts,
        num_samples=num_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
    )
    for s in samples:
        ids = [t for t in s["completion_ids"] if t != eos and t != pad]
        out[s["prompt"]].append(tokenizer.decode(ids, skip_special_tokens=True))
    return out


def generate(model, ids, mask, max_new_tokens, temperature, gen, eos, pad):
    """Plain sampling loop with a KV cache (deterministic under a torch.Generator)."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache_kw = "cache" if hasattr(out, "cache") else "past_key_values"  # transformers ≥ 5.2x: `cache`
    past = getattr(out, cache_kw)
    logits = out.logits[:, -1].float()
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    tokens = []
    for _ in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(ids.device)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        done = done | (nxt == eos)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{cache_kw: past},
        )
        past = getattr(out, cache_kw)
        logits = out.logits[:, -1].float()
    return torch.stack(tokens, dim=1)


@torch.no_grad()
def sequence_logps(
    model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 256
) -> torch.Tensor:
    """Summed log-prob of each completion (with its EOS) given its prompt — prefopt's tokenisation."""
    from prefopt.tokenization import encode_completion, encode_prompt

    device = next(model.parameters()).device
    res = []
    for s in range(0, len(prompts), batch_size):
        rows = []
        for p, c in zip(prompts[s : s + batch_size], completions[s : s + batch_size]):
            pi, ci = encode_prompt(tokenizer, p), encode_completion(tokenizer, p, c)
            rows.append((pi + ci, len(pi)))
        width = max(len(x) for x, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        cmask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, (x, plen) in enumerate(rows):
            ids[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
            cmask[j, plen : len(x)] = 1
        ids, mask, cmask = ids.to(device), mask.to(device), cmask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        res.append((lp * cmask[:, 1:]).sum(-1).cpu())
    return torch.cat(res)


# ------------------------------------------------------------------------------------------- data
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
    key = _key(
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
    with _file_lock(path.with_suffix(".lock")):
        if path.exists():
            return [json.loads(line) for line in path.read_text().splitlines()]
        rows = _draw_rows(task, size, split, seed, num_samples, noise, kind, pairs_per_prompt)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    return rows


def _draw_rows(task: Task, size, split, seed, num_samples, noise, kind, pairs_per_prompt) -> list[dict]:
    from prefopt.models import load_trained

    rng = random.Random(seed)
    pool = task.split(split)
    prompts = [rng.choice(pool) for _ in range(size)]
    model, tok = load_trained(reference_checkpoint(task.name))
    samples = sample(model, tok, prompts, num_samples=num_samples, temperature=1.0, seed=seed)
    rows: list[dict] = []
    source = f"world:{task.name}"
    from prefopt.data.schema import compute_prompt_id

    for p, outs in zip(prompts, samples):
        pid = compute_prompt_id(p)
        distinct = list(dict.fromkeys(outs))
        good = [c for c in distinct if task.reward(p, c) > 0]
        bad = [c for c in distinct if task.reward(p, c) == 0 and c.strip()]
        chosen = good[0] if good else task.answer(p)
        rejected_all = bad[:pairs_per_prompt] or [task.near_miss(p, rng)]
        if kind == "unpaired":
            # the unpaired view of the same pairs (as KTO's paper compares): one desirable and one
            # undesirable row per pair, so the labels are balanced and λ_D = λ_U = 1 fits the 1:1–4:3 rule
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
    from datasets import Dataset

    return Dataset.from_list(preference_rows(task, size, **kw))


# ------------------------------------------------------------------------------------------- evaluation
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


# ------------------------------------------------------------------------------------------- data source
def _register_source() -> None:
    from prefopt.data.registry import register_source

    @register_source("world")
    def read_world(spec: dict, *, base_dir=None, seed: int = 0, report=None):
        """The ground-truth world as a data source: {source: world, task: arith, size: 2000,
        kind: paired|unpaired, noise: 0.0, num_samples: 4, pairs_per_prompt: 1, split: train}."""
        from datasets import Dataset

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


with contextlib.suppress(ImportError):
    _register_source()
