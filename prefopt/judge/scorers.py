"""Scorers: ``scorer(prompt, completion) -> float`` from a dotted path (``module:function``), and the
sequence-classification reward model the RLHF baseline trains (:class:`RewardModelScorer`), which also
serves TRL's RLOO/GRPO as a reward function on prefopt's token ids."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch

from prefopt.core.errors import PrefoptError
from prefopt.data.tokenization import encode_completion, encode_prompt
from prefopt.model.loading import BUILTIN_DIR


def load_callable(path: str) -> Callable:
    """``package.module:function`` or ``package.module.function`` → the callable."""
    mod_name, sep, attr = path.partition(":")
    if not sep:
        mod_name, _, attr = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise PrefoptError(
            f'cannot load the scorer "{path}": {exc}.',
            where="iterative_dpo.scorer",
            fix="name an importable callable as module:function, e.g. prefopt.world:world_reward.",
        ) from None
    if not callable(obj):
        raise PrefoptError(f'"{path}" is not callable.', where="iterative_dpo.scorer")
    return obj


class RewardModelScorer:
    """A TRL reward function backed by a sequence-classification reward model, on prefopt's ids.

    Called by RLOO/GRPO as ``f(prompts=..., completions=..., completion_ids=..., **kw)``; scores
    ``encode_prompt(prompt) + completion_ids`` (cut after the first EOS, which is kept). Also usable as
    ``scorer(prompt, completion)`` (text), tokenised with :func:`prefopt.data.tokenization.encode_completion`."""

    __name__ = "reward_model"

    def __init__(self, model, tokenizer, batch_size: int = 256):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]]) -> list[float]:
        pad = self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        out: list[float] = []
        for s in range(0, len(sequences), self.batch_size):
            chunk = sequences[s : s + self.batch_size]
            width = max(len(x) for x in chunk)
            ids = torch.full((len(chunk), width), pad)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, x in enumerate(chunk):
                ids[j, : len(x)] = torch.tensor(x)
                mask[j, : len(x)] = 1
            logits = self.model(
                input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
            ).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out

    def sequences(self, prompts, completion_ids) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        seqs = []
        for p, c in zip(prompts, completion_ids):
            c = list(c)
            if eos in c:
                c = c[: c.index(eos) + 1]
            seqs.append(encode_prompt(self.tokenizer, p) + c)
        return seqs

    def __call__(self, prompts=None, completions=None, completion_ids=None, **_):
        if isinstance(prompts, str):  # scorer(prompt, completion) — the iterative-DPO calling convention
            return self.score_text([prompts], [completions])[0]
        if completion_ids is None:
            return self.score_text(prompts, completions)
        return self.score_ids(self.sequences(prompts, completion_ids))

    def text_sequences(self, prompts: list[str], completions: list[str]) -> list[list[int]]:
        """``prompt + completion`` ids of text replies, tokenised as training tokenises them."""
        return [
            encode_prompt(self.tokenizer, p) + encode_completion(self.tokenizer, p, c)
            for p, c in zip(prompts, completions)
        ]

    def score_text(self, prompts: list[str], completions: list[str]) -> list[float]:
        return self.score_ids(self.text_sequences(prompts, completions))


def load_reward_model(path: str | Path):
    """A reward model saved by :func:`run_rlhf` (``<run>/reward_model``) as a scorer."""
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

    path = Path(path)
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception:  # noqa: BLE001 - the builtin tokenizer
        tok = PreTrainedTokenizerFast.from_pretrained(str(BUILTIN_DIR))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return RewardModelScorer(model, tok)
