"""The ``transformers`` engine: batched, left-padded, length-grouped, seeded sampling with a KV cache.

It runs the model it is given — a plain ``PreTrainedModel`` or a PEFT model exactly as loaded — so the
weights that generate are the weights that train (a LoRA adapter is active unless the caller disables
it; the verl#7495 class of bug, an engine sampling stale base weights, cannot happen here).

Decoding is prefopt's own loop (the one :func:`prefopt.world.generate` runs): position ids from the
left-padded attention mask, a KV cache, ``softmax(logits / T)`` sampled with ``torch.multinomial``,
argmax at ``T = 0``. Its greedy output is token-for-token that of :func:`prefopt.world.sample` and
:func:`prefopt.evaluate.metrics.generate_completions` (tested on the world model).

Randomness (``rng``):

* ``per_sample`` (default) — every sample draws from its own ``torch.Generator`` seeded by
  :func:`prefopt.model.engines.base.sample_seed` (run seed, prompt ids, temperature, sample index). The draws
  therefore do not depend on batch size, length grouping, the other prompts or the prompt's position.
  The *logits* can still differ in the last float bits with the padding width of the batch (matmul
  shapes change), which in principle can flip a near-tied token; on the world model the outputs are
  identical across batchings (tested), in general they are identical up to that rounding.
* ``batch`` — one generator seeded with ``seed`` (``seed + t`` for the t-th temperature of a list)
  draws for whole batches in order, as
  :func:`prefopt.evaluate.metrics.generate_completions` does; with ``length_grouped=False`` the samples equal
  that function's exactly (tested), so callers can switch without changing a number. The draws then
  depend on the batch composition.

Greedy (``T = 0``) with ``k > 1`` decodes each prompt once and repeats the result ``k`` times (with
sample indices 0..k−1): the k replies would be identical anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prefopt.core.errors import PrefoptError
from prefopt.data.tokenization import encode_prompt
from prefopt.model.engines.base import (
    Completion,
    Engine,
    check_encoded_prompts,
    check_generate_args,
    eos_ids_of,
    make_completion,
    progress_enabled,
    register_engine,
    sample_seed,
    temperatures_of,
)
from prefopt.model.loading import load_trained


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


@torch.no_grad()
def decode(
    model,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperatures: Sequence[float],
    generators: Sequence[torch.Generator] | torch.Generator | None,
    eos_ids: set[int],
    pad_id: int,
) -> torch.Tensor:
    """New token ids ``(B, ≤ max_new_tokens)`` for a left-padded batch; pad after a row's EOS.

    ``temperatures`` gives each row's temperature (0 = greedy). ``generators`` is one generator per row
    (per-sample streams; a finished row stops drawing) or a single generator shared by the batch (one
    ``multinomial`` over all rows each step, finished rows included — the world's loop exactly)."""
    device = ids.device
    temps = torch.tensor([float(t) for t in temperatures], dtype=torch.float32)
    greedy = temps == 0
    shared = isinstance(generators, torch.Generator)
    if shared and len(set(float(t) for t in temperatures)) != 1:
        raise ValueError("a shared generator needs one temperature per batch")
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device) if eos_ids else None
    ckw = cache_kwarg(model)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past = _cache_of(out)
    logits = out.logits[:, -1].float()
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=device)
    tokens = []
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        if not bool(greedy.all()):
            if shared:
                t = float(temperatures[0])
                probs = torch.softmax(logits / t, dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generators).squeeze(-1).to(device)
            else:
                cpu_logits = logits.cpu()
                drawn = nxt.cpu().clone()
                for r in range(ids.size(0)):
                    if greedy[r] or bool(done[r]):
                        continue
                    probs = torch.softmax(cpu_logits[r] / temps[r], dim=-1)
                    drawn[r] = torch.multinomial(probs, 1, generator=generators[r])[0]
                nxt = drawn.to(device)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        if eos is not None:
            done = done | torch.isin(nxt, eos)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{ckw: past},
        )
        past = _cache_of(out)
        logits = out.logits[:, -1].float()
    return torch.stack(tokens, dim=1)


def cache_kwarg(model) -> str:
    """The name a model's forward takes its KV cache by: ``cache`` (transformers ≥ 5.2x) or the older
    ``past_key_values`` (deprecated there, removed in 5.40)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def left_pad(encoded: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for j, e in enumerate(encoded):
        if e:
            ids[j, width - len(e) :] = torch.tensor(list(e), dtype=torch.long)
            mask[j, width - len(e) :] = 1
    return ids, mask


class TransformersEngine(Engine):
    """Sample from an in-memory ``transformers`` (or PEFT) causal LM.

    ``batch_size`` sequences per forward; ``length_grouped`` sorts the work by prompt length (longest
    first, so a batch that does not fit in memory fails at once) and restores the caller's order;
    ``rng`` as in the module docstring; ``progress`` a tqdm bar (None: only on a TTY)."""

    name = "transformers"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 64,
        length_grouped: bool = True,
        rng: str = "per_sample",
        progress: bool | None = None,
    ):
        if rng not in ("per_sample", "batch"):
            raise PrefoptError(
                f'rng = "{rng}".', where="generation.rng", fix='use "per_sample" (default) or "batch".'
            )
        if batch_size < 1:
            raise PrefoptError(f"batch_size = {batch_size}.", where="generation.batch_size", fix="use ≥ 1.")
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
            raise PrefoptError(
                "the tokenizer has neither a pad nor an EOS token, so prompts cannot be padded.",
                where="model.tokenizer",
                fix="use a tokenizer with an EOS token or set its pad token.",
            )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.length_grouped = bool(length_grouped)
        self.rng = rng
        self.progress = progress
        self.eos_ids = eos_ids_of(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "batch_size": self.batch_size,
            "length_grouped": self.length_grouped,
            "rng": self.rng,
            "peft": hasattr(self.model, "peft_config"),
        }

    def encode(self, prompt) -> list[int]:
        return encode_prompt(self.tokenizer, prompt)

    def generate(
        self,
        prompts: Sequence[Any],
        k: int = 1,
        temperature: float | Sequence[float] = 1.0,
        max_new_tokens: int = 64,
        seed: int = 0,
    ) -> list[list[Completion]]:
        check_generate_args(k, max_new_tokens)
        temps = temperatures_of(temperature)
        encoded = [self.encode(p) for p in prompts]
        check_encoded_prompts(encoded)
        # work items: (prompt index, temperature, sample index); greedy is decoded once per prompt
        results: dict[tuple[int, int, int], list[int]] = {}
        passes: list[list[tuple[int, int, int]]] = []
        if self.rng == "batch":  # one stream per temperature, prompt-major as the world's loop
            for ti, t in enumerate(temps):
                reps = 1 if t == 0 else k
                passes.append([(i, ti, j) for i in range(len(prompts)) for j in range(reps)])
        else:
            items = []
            for i in range(len(prompts)):
                for ti, t in enumerate(temps):
                    items.extend((i, ti, j) for j in range(1 if t == 0 else k))
            passes.append(items)
        was_training = self.model.training
        self.model.eval()
        device = _device(self.model)
        total = sum(len(p) for p in passes)
        bar = None
        if progress_enabled(self.progress) and total:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="generate", unit="seq", leave=False)
        try:
            for pass_index, items in enumerate(passes):
                if self.length_grouped:
                    items = sorted(items, key=lambda it: -len(encoded[it[0]]))  # stable: ties keep order
                shared = (
                    torch.Generator().manual_seed(int(seed) + pass_index) if self.rng == "batch" else None
                )
                for start in range(0, len(items), self.batch_size):
                    chunk = items[start : start + self.batch_size]
                    ids, mask = left_pad([encoded[i] for i, _, _ in chunk], self.pad_id)
                    row_temps = [temps[ti] for _, ti, _ in chunk]
                    if shared is not None:
                        gens: Any = shared
                    else:
                        gens = [
                            torch.Generator().manual_seed(sample_seed(seed, encoded[i], temps[ti], j))
                            for i, ti, j in chunk
                        ]
                    new = decode(
                        self.model,
                        ids.to(device),
                        mask.to(device),
                        max_new_tokens=max_new_tokens,
                        temperatures=row_temps,
                        generators=gens,
                        eos_ids=self.eos_ids,
                        pad_id=self.pad_id,
                    )
                    for item, row in zip(chunk, new.tolist()):
                        results[item] = row
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
            if was_training:
                self.model.train()
        out: list[list[Completion]] = []
        for i in range(len(prompts)):
            row_out = []
            for ti, t in enumerate(temps):
                for j in range(k):
                    src = (i, ti, 0 if t == 0 else j)
                    row_out.append(
                        make_completion(
                            self.tokenizer,
                            results[src],
                            eos_ids=self.eos_ids,
                            pad_id=self.pad_id,
                            temperature=t,
                            sample_index=j,
                            prompt_index=i,
                        )
                    )
            out.append(row_out)
        return out


@register_engine("transformers")
def _transformers_engine(
    *,
    model=None,
    tokenizer=None,
    checkpoint: str | None = None,
    batch_size: int = 64,
    length_grouped: bool = True,
    rng: str = "per_sample",
    progress: bool | None = None,
    **unknown: Any,
) -> TransformersEngine:
    if unknown:
        name = sorted(unknown)[0]
        raise PrefoptError(
            f'unknown option "{name}" for the transformers engine.',
            where="generation.options",
            fix="the transformers engine takes batch_size, length_grouped, rng, progress.",
        )
    if model is None:
        if checkpoint is None:
            raise PrefoptError(
                "the transformers engine needs a model (in memory) or a checkpoint directory.",
                where="generation",
            )

        model, tokenizer = load_trained(checkpoint)
    if tokenizer is None:
        raise PrefoptError("the transformers engine needs the model's tokenizer.", where="generation")
    return TransformersEngine(
        model, tokenizer, batch_size=batch_size, length_grouped=length_grouped, rng=rng, progress=progress
    )
