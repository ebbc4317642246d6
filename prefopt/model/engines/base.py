"""One interface for everything that samples replies from a policy, and a registry of engines.

An engine turns prompts into completions::

    engine.generate(prompts, k=4, temperature=[0.7, 1.0], max_new_tokens=64, seed=0)
    -> list[list[Completion]]   # one list per prompt: k completions per temperature, temperature-major

Each :class:`Completion` carries its text, the exact sampled token ids, its length and its provenance
(the prompt index, the temperature and the sample index), so data made from it can say where every
reply came from.

Engines are chosen by name (``generation.engine`` in a config): ``transformers`` (the embedded
default, :mod:`prefopt.model.engines.hf`) and ``vllm`` (offline ``vllm.LLM`` for scale,
:mod:`prefopt.model.engines.vllm`). :func:`build_engine` makes one; :func:`register_engine` adds one.

Prompts are tokenised by :func:`prefopt.data.tokenization.encode_prompt`, the one rule training and
evaluation use, so a policy is sampled from exactly the prompt ids it was trained on.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefopt.core.errors import PrefoptError, did_you_mean


@dataclass(frozen=True)
class Completion:
    """One sampled reply with its provenance.

    ``token_ids`` are the sampled tokens up to and including the first EOS when EOS was sampled (cut at
    ``max_new_tokens`` otherwise); ``length`` counts the new tokens before EOS; ``finished`` says whether
    EOS was reached. ``text`` is the decoded reply without EOS/padding/special tokens."""

    text: str
    token_ids: tuple[int, ...]
    length: int
    finished: bool
    temperature: float
    sample_index: int
    prompt_index: int

    def provenance(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "sample_index": self.sample_index}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["token_ids"] = list(self.token_ids)
        return d


def temperatures_of(
    temperature: float | Sequence[float], where: str = "generation.temperature"
) -> list[float]:
    """A temperature or a list of them → a checked list (each ≥ 0 and finite; 0 means greedy)."""
    temps = [temperature] if isinstance(temperature, int | float) else list(temperature)
    if not temps:
        raise PrefoptError("no temperature given.", where=where, fix="give a number ≥ 0 or a list of them.")
    out = []
    for t in temps:
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise PrefoptError(f"temperature {t!r} is not a number.", where=where) from None
        if not math.isfinite(t) or t < 0:
            raise PrefoptError(
                f"temperature {t} is not allowed.", where=where, fix="use 0 (greedy) or a positive number."
            )
        out.append(t)
    return out


def check_generate_args(k: int, max_new_tokens: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise PrefoptError(f"k = {k!r} replies per prompt.", where="generation.k", fix="use k ≥ 1.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise PrefoptError(
            f"max_new_tokens = {max_new_tokens!r}.", where="generation.max_new_tokens", fix="use ≥ 1."
        )


def check_encoded_prompts(encoded: Sequence[Sequence[int]]) -> None:
    """Every engine refuses a prompt that encodes to no tokens: there is nothing to continue from (the
    transformers engine would fail inside ``generate``, vLLM on its own terms)."""
    for i, e in enumerate(encoded):
        if not e:
            raise PrefoptError(
                f"prompt {i} encodes to no tokens, so there is nothing to continue from.",
                where="prompts",
                fix="remove empty prompts (or use a tokenizer that adds BOS).",
            )


def sample_seed(seed: int, prompt_ids: Sequence[int], temperature: float, sample_index: int) -> int:
    """The seed of one sample's random stream: a function of the run seed, the prompt's token ids, the
    temperature and the sample index only — not of the batch the sample lands in, nor of the other
    prompts, nor of the prompt's position in the list (so a resumed run draws the same replies)."""
    key = f"{int(seed)}|{','.join(map(str, prompt_ids))}|{float(temperature)!r}|{int(sample_index)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**63 - 1)


def eos_ids_of(tokenizer, model=None) -> set[int]:
    """Token ids that end a reply: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None)
    extra = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, list | tuple):
        ids.update(int(x) for x in extra)
    return ids


def make_completion(
    tokenizer,
    row: Sequence[int],
    *,
    eos_ids: set[int],
    pad_id: int | None,
    temperature: float,
    sample_index: int,
    prompt_index: int,
    finished: bool | None = None,
) -> Completion:
    """A :class:`Completion` from the new token ids of one sequence (cut after the first EOS)."""
    row = list(row)
    cut = next((i for i, t in enumerate(row) if t in eos_ids), None)
    if cut is not None:
        ids, length, done = row[: cut + 1], cut, True
    else:
        ids, length, done = row, len(row), bool(finished)
    keep = [t for t in ids if t not in eos_ids and t != pad_id]
    text = tokenizer.decode(keep, skip_special_tokens=True)
    return Completion(
        text=text,
        token_ids=tuple(ids),
        length=length,
        finished=done,
        temperature=float(temperature),
        sample_index=int(sample_index),
        prompt_index=int(prompt_index),
    )


def progress_enabled(progress: bool | None) -> bool:
    """A progress bar only where someone watches: on when stderr is a TTY unless turned off."""
    if progress is not None:
        return bool(progress)
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Engine(ABC):
    """A generation engine. Subclasses implement :meth:`generate`."""

    name: str = "engine"

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Any],
        k: int = 1,
        temperature: float | Sequence[float] = 1.0,
        max_new_tokens: int = 64,
        seed: int = 0,
    ) -> list[list[Completion]]:
        """``k`` completions per prompt and temperature. The result has one list per prompt, in the
        order of ``prompts``; each holds ``k × len(temperatures)`` completions, temperature-major
        (all of the first temperature's samples, then the next's), sample indices 0..k−1 within each
        temperature. A temperature of 0 is greedy decoding."""

    def describe(self) -> dict[str, Any]:
        """What the run manifest records about the engine."""
        return {"engine": self.name}


# ------------------------------------------------------------------------------------------ registry
EngineFactory = Callable[..., Engine]
_ENGINES: dict[str, EngineFactory] = {}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Register ``factory(**options) -> Engine`` under ``name`` (``generation.engine: name``)."""

    def deco(factory: EngineFactory) -> EngineFactory:
        _ENGINES[name] = factory
        return factory

    return deco


BUILTIN_ENGINES = {"transformers": "prefopt.model.engines.hf", "vllm": "prefopt.model.engines.vllm"}
"""Engine name → the module that registers it (``vllm`` imports vllm only when an engine is built)."""


def _builtin_engines() -> None:
    # registry plugin loading: the engine modules import this one, so they are loaded by name
    for name, module in BUILTIN_ENGINES.items():
        if name not in _ENGINES:
            importlib.import_module(module)


def engine_names() -> list[str]:
    _builtin_engines()
    return sorted(_ENGINES)


def build_engine(name: str, *, where: str = "generation.engine", **options: Any) -> Engine:
    """The engine registered as ``name``, built with ``options`` (``model``/``tokenizer`` for an
    in-memory policy, ``checkpoint`` for a saved one, and the engine's own settings)."""
    _builtin_engines()
    if name not in _ENGINES:
        raise PrefoptError(
            f'unknown generation engine "{name}".{did_you_mean(name, _ENGINES)}',
            where=where,
            fix=f"choose one of: {', '.join(sorted(_ENGINES))}.",
        )
    return _ENGINES[name](**options)


class GenerationSection(BaseModel):
    """A ``generation:`` block: which engine samples, and how."""

    model_config = ConfigDict(extra="forbid")

    engine: str = Field("transformers", description="transformers (default) or vllm.")
    batch_size: int = Field(64, gt=0, description="Sequences per forward (transformers engine).")
    length_grouped: bool = Field(True, description="Sort prompts by length into batches (transformers).")
    rng: Literal["per_sample", "batch"] = Field(
        "per_sample",
        description=(
            "per_sample: each sample draws from its own seeded stream (independent of batching); batch: one "
            "stream over batches in order (reproduces prefopt.world.sample; use with length_grouped: false)."
        ),
    )
    lora: Literal["request", "merge"] = Field(
        "request", description="vllm: serve a LoRA adapter as a LoRARequest, or merge it first."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Extra keyword arguments for the engine (e.g. vllm.LLM settings)."
    )

    def engine_options(self) -> dict[str, Any]:
        if self.engine == "vllm":
            return {"lora": self.lora, **self.options}
        if self.engine == "transformers":
            return {
                "batch_size": self.batch_size,
                "length_grouped": self.length_grouped,
                "rng": self.rng,
                **self.options,
            }
        return dict(self.options)
