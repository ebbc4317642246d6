"""Builds the second world once and caches it: a small Llama SFT-trained by plain TRL, and a user's
preference file drawn from it.

What a user would have made elsewhere, with no prefopt involved:

1. **Tokenizer** — word-level (``tokenizers.models.WordLevel`` over the task's words, whitespace
   pre-tokenizer), with a BOS token that the tokenizer itself adds (``TemplateProcessing``) and an EOS,
   wrapped as ``PreTrainedTokenizerFast``. prefopt's builtin tokenizer is byte-level with no BOS.
2. **Model** — ``LlamaForCausalLM`` from a ``LlamaConfig`` with random weights (2 layers, hidden 64).
3. **SFT** — ``trl.SFTTrainer`` on prompt–completion demonstrations of :mod:`second_world.task`,
   60 % of them near-misses (one letter wrong), with TRL's own tokenisation. The result knows the
   answer (greedy mostly right) but, sampled at T = 1, is right only about half the time: the regime
   where preference learning should help.
4. **Preference file** — ``pairs.jsonl`` with the user's own column names ``question`` / ``good`` /
   ``bad``: for each of a set of training prompts, 8 replies sampled from the SFT model at T = 1; the
   correct answer (the true one when no sample was right) against up to 3 *distinct wrong samples*, so
   several pairs share their correct reply, as in real data (one right answer, several wrong ones).
   All rejected replies are the SFT model's own samples (no constructed near-misses).

Everything lands in ``$PREFOPT_CACHE/second_world/v1/<key>/`` (``~/.cache/prefopt`` by default): built
once under a file lock, written to a temporary directory and renamed into place.

No prefopt code is imported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from . import task

log = logging.getLogger("second_world")

VERSION = 1  # bump when the task, the tokenizer or the build changes

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


@dataclass(frozen=True)
class Settings:
    # model (LlamaConfig)
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    model_seed: int = 0
    # SFT (trl.SFTTrainer)
    demos: int = 8000
    noise: float = 0.6  # fraction of demonstrations that are near-misses (one letter wrong)
    sft_steps: int = 400
    sft_batch_size: int = 64
    sft_learning_rate: float = 3e-3
    sft_seed: int = 0
    # preference data
    data_prompts: int = 1600
    samples_per_prompt: int = 8
    pairs_per_prompt: int = 3
    rows: int = 4000
    data_seed: int = 0


SETTINGS = Settings()


@dataclass(frozen=True)
class World:
    root: Path

    @property
    def model_dir(self) -> Path:
        """The SFT model + tokenizer (a local directory, as a user's own model)."""
        return self.root / "sft"

    @property
    def pairs(self) -> Path:
        """The user's preference file: JSONL with columns question / good / bad."""
        return self.root / "pairs.jsonl"

    @property
    def info(self) -> dict:
        return json.loads((self.root / "build.json").read_text())


def cache_root() -> Path:
    root = os.environ.get("PREFOPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prefopt")
    return Path(root) / "second_world" / f"v{VERSION}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def key(settings: Settings) -> str:
    return hashlib.sha256(
        json.dumps({"v": VERSION, **asdict(settings)}, sort_keys=True).encode()
    ).hexdigest()[:16]


def world(settings: Settings = SETTINGS) -> World:
    """The cached world for ``settings``, built on first use (one process builds, others wait)."""
    out = cache_root() / key(settings)
    if (out / "build.json").exists():
        return World(out)
    with file_lock(out.with_suffix(".lock")):
        if (out / "build.json").exists():
            return World(out)
        tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with torch_threads(1):
            info = _build(settings, tmp)
        (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, out)
    return World(out)


# ------------------------------------------------------------------------------------------ pieces
def build_tokenizer():
    """A word-level tokenizer over the task's words; it adds BOS itself; EOS is ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = SPECIAL + ["sort", "="] + list(task.ALPHABET)
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def build_model(tokenizer, settings: Settings):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_attention_heads,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(settings.model_seed)
    return LlamaForCausalLM(config)


def demonstrations(settings: Settings) -> list[dict]:
    """SFT rows ``{prompt, completion}``: a ``noise`` fraction of them near-misses."""
    rng = random.Random(settings.sft_seed)
    pool = task.split("train")
    rows = []
    for _ in range(settings.demos):
        p = rng.choice(pool)
        c = task.near_miss(p, rng) if rng.random() < settings.noise else task.answer(p)
        rows.append({"prompt": p, "completion": c})
    return rows


def sft(settings: Settings, out_dir: Path) -> None:
    """Plain TRL SFT of a random Llama on the noisy demonstrations; saves model + tokenizer."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, settings)
    config = SFTConfig(
        output_dir=str(out_dir / "sft-run"),
        max_steps=settings.sft_steps,
        per_device_train_batch_size=settings.sft_batch_size,
        learning_rate=settings.sft_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=50,
        weight_decay=0.0,
        logging_steps=100,
        save_strategy="no",
        report_to="none",
        seed=settings.sft_seed,
        bf16=False,  # CPU
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(demonstrations(settings)),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(out_dir / "sft"))
    tokenizer.save_pretrained(str(out_dir / "sft"))
    shutil.rmtree(out_dir / "sft-run", ignore_errors=True)


def preference_rows(settings: Settings, model_dir: Path) -> list[dict]:
    """The user's pairs: the correct answer against up to ``pairs_per_prompt`` distinct wrong samples."""
    from .evaluate import generate_replies, load

    model, tokenizer = load(model_dir)
    rng = random.Random(settings.data_seed)
    prompts = rng.sample(task.split("train"), settings.data_prompts)
    samples = generate_replies(
        model,
        tokenizer,
        prompts,
        num_samples=settings.samples_per_prompt,
        temperature=1.0,
        seed=settings.data_seed,
    )
    rows = []
    for p, outs in zip(prompts, samples):
        good = task.answer(p)
        wrong = []
        for c in outs:
            letters = c.split()
            if not letters or task.reward(p, c) > 0:
                continue
            r = task.reply(letters)
            if r not in wrong:
                wrong.append(r)
        for bad in wrong[: settings.pairs_per_prompt]:
            rows.append({"question": p, "good": good, "bad": bad})
        if len(rows) >= settings.rows:
            break
    return rows[: settings.rows]


def _build(settings: Settings, out: Path) -> dict:
    from .evaluate import evaluate

    t0 = time.time()
    sft(settings, out)
    t_sft = time.time() - t0
    rows = preference_rows(settings, out / "sft")
    with open(out / "pairs.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    reference = evaluate(out / "sft")
    per_prompt: dict[str, int] = {}
    for r in rows:
        per_prompt[r["question"]] = per_prompt.get(r["question"], 0) + 1
    return {
        "version": VERSION,
        "settings": asdict(settings),
        "rows": len(rows),
        "prompts": len(per_prompt),
        "pairs_per_prompt": {
            str(k): sum(v == k for v in per_prompt.values()) for k in sorted(set(per_prompt.values()))
        },
        "reference": reference,
        "sft_seconds": round(t_sft, 1),
        "build_seconds": round(time.time() - t0, 1),
    }
