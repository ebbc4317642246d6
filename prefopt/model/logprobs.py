"""Log-probabilities of completions under a model, on prefopt's one tokenisation.

* :func:`model_logps` — summed completion log-probs of already padded rows (a plain forward);
* :func:`completion_logps` — the same for ``(prompt_ids, completion_ids)`` pairs, batched by length;
* :func:`sequence_logps` — the same for text prompts and completions (tokenised by
  :mod:`prefopt.data.tokenization`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefopt.data.tokenization import encode_completion, encode_prompt

DEFAULT_BATCH_SIZE = 256  # rows per forward (evaluation.batch_size)
DEFAULT_TOKEN_BUDGET = 16384  # padded tokens per forward


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def model_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """Summed completion log-probs of each row (plain forward; used by evaluation and tests)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * completion_mask[:, 1:]).sum(-1)


def length_batches(
    lengths: Sequence[int], *, max_batch: int = DEFAULT_BATCH_SIZE, token_budget: int = DEFAULT_TOKEN_BUDGET
) -> list[list[int]]:
    """Indices grouped into batches of similar length: at most ``max_batch`` rows and ``token_budget``
    padded tokens each (a per-forward overhead dominates small models; memory large ones)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:  # ascending lengths: the row being added is the longest so far
        if cur and (len(cur) >= max_batch or (len(cur) + 1) * lengths[i] > token_budget):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@torch.no_grad()
def completion_logps(
    model,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_token_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each completion given its prompt, and the completion lengths (tokens).

    ``sequences`` holds ``(prompt_ids, completion_ids)`` exactly as training sees them (right padding,
    plain forward — :func:`model_logps`)."""
    was_training = model.training
    model.eval()
    device = device_of(model)
    result = torch.zeros(len(sequences), dtype=torch.float64)
    total = [len(p) + len(c) for p, c in sequences]
    for idx in length_batches(total, max_batch=batch_size, token_budget=token_budget):
        width = max(total[i] for i in idx)
        ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        cmask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            p, c = list(sequences[i][0]), list(sequences[i][1])
            ids[j, : total[i]] = torch.tensor(p + c, dtype=torch.long)
            mask[j, : total[i]] = 1
            cmask[j, len(p) : total[i]] = 1
        lp = model_logps(model, ids.to(device), mask.to(device), cmask.to(device)).double().cpu()
        result[idx] = lp
    if was_training:
        model.train()
    return result, torch.tensor([len(c) for _, c in sequences], dtype=torch.float64)


@torch.no_grad()
def sequence_logps(
    model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 256
) -> torch.Tensor:
    """Summed log-prob of each completion (with its EOS) given its prompt — prefopt's tokenisation."""
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
