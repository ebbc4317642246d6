"""Generation for evaluation and the world: sampled completions with their exact token ids, and the KL to
a reference and the completion lengths measured on such samples. Every sample comes from the generation
engine interface (:mod:`prefopt.model.engines`), the same one ``prefopt data generate`` and online DPO use.

Generation starts from :func:`prefopt.data.tokenization.encode_prompt` — the ids training and
evaluation use — so a sample can be scored exactly as it was generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prefopt.model.engines.hf import TransformersEngine, decode
from prefopt.model.logprobs import DEFAULT_BATCH_SIZE, completion_logps


def generate(model, ids, mask, max_new_tokens, temperature, gen, eos, pad):
    """The seeded sampling loop on a left-padded batch, with a KV cache (deterministic under a
    ``torch.Generator``): :func:`prefopt.model.engines.hf.decode` with one shared generator."""
    return decode(
        model,
        ids,
        mask,
        max_new_tokens=max_new_tokens,
        temperatures=[temperature] * ids.size(0),
        generators=gen,
        eos_ids={eos} if eos is not None else set(),
        pad_id=pad,
    )


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[Any],
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Sample completions and keep their exact token ids.

    Returns one dict per sample: ``prompt`` (index into ``prompts``), ``prompt_ids``, ``completion_ids``
    (the sampled tokens up to and including EOS when EOS was sampled; truncated at ``max_new_tokens``
    otherwise) and ``length`` (new tokens before EOS). The samples come from the generation engine
    (:class:`~prefopt.model.engines.hf.TransformersEngine` with one seeded stream per call, prompts in
    order: ``rng="batch"``, ``length_grouped=False``), which starts from
    :func:`prefopt.data.tokenization.encode_prompt`; the same seed gives the same samples as :func:`sample`."""
    engine = TransformersEngine(model, tokenizer, batch_size=batch_size, length_grouped=False, rng="batch")
    rows = engine.generate(
        prompts, k=num_samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed
    )
    return [
        {
            "prompt": i,
            "prompt_ids": engine.encode(prompts[i]),
            "completion_ids": list(c.token_ids),
            "length": c.length,
        }
        for i, row in enumerate(rows)
        for c in row
    ]


def sampled_kl_and_length(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[Any],
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reference_lengths: bool = True,
) -> dict[str, Any]:
    """KL(π ‖ π_ref) on samples from π and mean completion lengths of π (and of π_ref).

    ``reference`` is a model, or ``None`` for no KL; a PEFT policy may pass ``"disable_adapter"`` to use
    its own adapter-disabled base as the reference (no second copy of the weights)."""
    samples = generate_completions(
        policy,
        tokenizer,
        prompts,
        num_samples=num_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
    )
    res: dict[str, Any] = {
        "num_prompts": len(prompts),
        "samples_per_prompt": num_samples,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "mean_length": _mean([s["length"] for s in samples]),
        "truncated_fraction": _mean([float(s["length"] == len(s["completion_ids"])) for s in samples]),
    }
    if reference is not None:
        seqs = [(s["prompt_ids"], s["completion_ids"]) for s in samples]
        pad = tokenizer.pad_token_id
        lp, _ = completion_logps(policy, seqs, pad_token_id=pad, batch_size=batch_size)
        with reference_context(policy, reference) as ref_model:
            lr, _ = completion_logps(ref_model, seqs, pad_token_id=pad, batch_size=batch_size)
            if reference_lengths:
                ref_samples = generate_completions(
                    ref_model,
                    tokenizer,
                    prompts,
                    num_samples=num_samples,
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                    seed=seed,
                    batch_size=batch_size,
                )
                res["reference_mean_length"] = _mean([s["length"] for s in ref_samples])
                res["length_ratio"] = _ratio(res["mean_length"], res["reference_mean_length"])
        res["kl_to_reference"] = float((lp - lr).mean())
    return res


class reference_context:
    """``with reference_context(policy, ref) as m`` → the reference model (adapter disabled for PEFT)."""

    def __init__(self, policy, reference):
        self.policy, self.reference, self._ctx = policy, reference, None

    def __enter__(self):
        if isinstance(self.reference, str) and self.reference == "disable_adapter":
            self._ctx = self.policy.disable_adapter()
            self._ctx.__enter__()
            return self.policy
        return self.reference

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
        return False


def _mean(xs) -> float | None:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else None


def _ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a / b)


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
    used: :func:`generate_completions`, decoded."""
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
