"""Model and tokenizer loading: the builtin offline family, hub/local checkpoints, LoRA and QLoRA.

Sources understood by ``model.name``:

* ``builtin:<key>`` — a small Llama-architecture model whose config lives in
  ``prefopt/builtin/models.json`` and whose byte-level tokenizer ships in ``prefopt/builtin/``.
  Weights are initialised deterministically from the recipe seed; nothing is downloaded.
* ``<prefix>:<name>`` for a prefix a plugin registered with :func:`register_model_source` — e.g.
  ``world:<task>``, the ground-truth world's SFT reference policy for ``<task>`` (see
  :mod:`prefopt.world`), warm-started from the builtin model and cached on disk.
* a local directory, or a hub id resolved through the local Hugging Face cache. Offline and not
  cached → a :class:`~prefopt.core.errors.PrefoptError` that says how to pre-download it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from prefopt.core import plugins
from prefopt.core.errors import PrefoptError, did_you_mean

log = logging.getLogger("prefopt")

BUILTIN_DIR = Path(__file__).parent / "builtin"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelSource:
    """Model names ``<prefix>:<key>`` resolved by a plugin: ``checkpoint(key)`` returns a local directory
    (built on first use, e.g. the world's reference); their tokenizer is the builtin one."""

    prefix: str
    checkpoint: Callable[[str], Path]


_MODEL_SOURCES: dict[str, ModelSource] = {}


def register_model_source(prefix: str, checkpoint: Callable[[str], Path]) -> None:
    """Let ``model.name: <prefix>:<key>`` load ``checkpoint(key)`` (called by plugins when imported)."""
    _MODEL_SOURCES[prefix] = ModelSource(prefix, checkpoint)


def model_source(name: str) -> ModelSource | None:
    """The registered source of ``name`` (``world:arith`` → the world's), loading its plugin if needed."""
    prefix, sep, _ = name.partition(":")
    if not sep or prefix == "builtin":
        return None
    if prefix not in _MODEL_SOURCES:
        plugins.load_plugin(prefix)
    return _MODEL_SOURCES.get(prefix)


def registered_checkpoint(name: str) -> Path | None:
    """The local checkpoint of a registered model name (``world:arith``), else None."""
    source = model_source(name)
    return None if source is None else source.checkpoint(name.split(":", 1)[1])


@cache
def builtin_specs() -> dict[str, dict[str, Any]]:
    specs = json.loads((BUILTIN_DIR / "models.json").read_text())
    return {k: v for k, v in specs.items() if not k.startswith("_")}


def load_tokenizer(
    name: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    chat_template: str | None = None,
):
    """Tokenizer for a model source; pad token set (to EOS when missing) and right padding."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if name.startswith("builtin:") or model_source(name) is not None:
        tok = PreTrainedTokenizerFast.from_pretrained(str(BUILTIN_DIR))
    else:
        path = _resolve_pretrained(name, revision=revision, what="tokenizer")
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if chat_template:
        tok.chat_template = chat_template
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise PrefoptError(
                f"the tokenizer of {name} has neither a pad nor an EOS token.",
                where="model.name",
                fix="use a tokenizer with an EOS token, or set model.tokenizer to one that has it.",
            )
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def builtin_config(key: str):
    from transformers import LlamaConfig

    specs = builtin_specs()
    if key not in specs:
        raise PrefoptError(
            f'unknown builtin model "builtin:{key}".{did_you_mean(key, specs)} '
            f"Available: {', '.join('builtin:' + k for k in specs)}.",
            where="model.name",
        )
    spec = {k: v for k, v in specs[key].items() if k != "description"}
    tok_cfg = json.loads((BUILTIN_DIR / "tokenizer.json").read_text())
    vocab = 256 + len(tok_cfg["added_tokens"])
    vocab = (vocab + 7) // 8 * 8  # pad the embedding to a multiple of 8
    return LlamaConfig(
        vocab_size=vocab,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_dropout=0.0,
        **spec,
    )


def build_builtin(key: str, seed: int, dtype: torch.dtype = torch.float32, num_labels: int | None = None):
    """A builtin model with deterministic initialisation: the same (key, seed) gives the same weights.
    With ``num_labels`` a sequence classifier (a reward model's trunk and head) instead of a causal LM."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    config = builtin_config(key)
    devices = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if num_labels is not None:
            config.num_labels = num_labels
            return LlamaForSequenceClassification(config).to(dtype)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    return model.to(dtype)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _resolve_pretrained(name: str, *, revision: str | None, what: str) -> str:
    """Return a local path or a hub id that is present in the local cache; else a clear error."""
    p = Path(name).expanduser()
    if p.exists():
        return str(p)
    if name.startswith((".", "/", "~")):
        raise PrefoptError(
            f"model path {name} does not exist.",
            where="model.name",
            fix="check the path (it is resolved against the recipe's folder).",
        )
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(cached, str):
        return name
    if what == "tokenizer":
        for fname in ("tokenizer_config.json", "tokenizer.json"):
            if isinstance(try_to_load_from_cache(name, fname, revision=revision), str):
                return name
    if _offline():
        # Without a cached copy, loading needs the network; offline, say so instead of failing deep
        # inside transformers.
        raise PrefoptError(
            f'"{name}" is not a local path and is not in the local Hugging Face cache '
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}), and prefopt runs offline "
            "(HF_HUB_OFFLINE=1) by default.",
            where="model.name",
            fix=(
                f"on a machine with network access run `huggingface-cli download {name}` (or set "
                "HF_HUB_OFFLINE=0 to let prefopt download it), or point model.name at a local directory, "
                "or use the offline model `builtin:tiny-arith`."
            ),
        )
    return name


def resolve_model_path(name: str, *, revision: str | None = None) -> str:
    """A loadable path or cached hub id for ``name``: a registered name's checkpoint (``world:arith``),
    else a local path or a hub id present in the local cache (else a clear error)."""
    checkpoint = registered_checkpoint(name)
    if checkpoint is not None:
        return str(checkpoint)
    return _resolve_pretrained(name, revision=revision, what="model")


# ------------------------------------------------------------------------------------------- safety
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")
"""Weight files that torch unpickles (transformers loads them with ``weights_only=True``, which still
runs the unpickler); prefopt refuses them unless ``model.allow_pickle_weights`` is set."""


def _weight_files(directory: Path) -> tuple[list[str], list[str]]:
    """(safetensors files, pickle-format weight files) directly inside ``directory``."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    safe = [n for n in names if n.endswith(".safetensors") or n.endswith(".safetensors.index.json")]
    pickled = [n for n in names if n.lower().endswith(PICKLE_WEIGHTS) and not n.startswith("training_args")]
    return safe, pickled


def check_weight_files(directory: str | Path, *, allow_pickle: bool, where: str = "model.name") -> None:
    """Refuse a checkpoint folder whose weights exist only as pickles (or not at all), before loading."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    safe, pickled = _weight_files(directory)
    if safe or (pickled and allow_pickle):
        return
    if pickled:
        raise PrefoptError(
            f"{directory} holds its weights only in pickle format ({', '.join(pickled)}); unpickling a file can "
            "run arbitrary code, so prefopt loads safetensors only.",
            where=where,
            fix="convert the checkpoint once where you trust it (`AutoModelForCausalLM.from_pretrained(dir)."
            "save_pretrained(dir, safe_serialization=True)`), or set model.allow_pickle_weights: true in the "
            "recipe for a checkpoint you trust.",
        )
    if (directory / "config.json").exists() and not (directory / "adapter_config.json").exists():
        raise PrefoptError(
            f"{directory} has a config.json but no weights (no *.safetensors file).",
            where=where,
            fix="copy the model's .safetensors files next to its config.json (or point model.name elsewhere).",
        )


def _cached_hub_file(name: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name, filename, revision=revision)
    return found if isinstance(found, str) else None


def check_hub_weights(name: str, *, revision: str | None, allow_pickle: bool) -> None:
    """The same refusal for a hub id whose cached snapshot holds pickle weights but no safetensors."""
    if allow_pickle:
        return
    for f in ("model.safetensors", "model.safetensors.index.json"):
        if _cached_hub_file(name, f, revision):
            return
    pickled = [
        f
        for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")
        if _cached_hub_file(name, f, revision)
    ]
    if pickled:
        raise PrefoptError(
            f'the cached hub model "{name}" has only pickle-format weights ({", ".join(pickled)}); unpickling a '
            "file can run arbitrary code, so prefopt loads safetensors only.",
            where="model.name",
            fix="use a revision that ships model.safetensors (many repos have a refs/pr/ conversion), or set "
            "model.allow_pickle_weights: true in the recipe for a checkpoint you trust.",
        )


def _model_config_json(name: str, revision: str | None) -> tuple[dict | None, str]:
    p = Path(name).expanduser()
    path = p / "config.json" if p.is_dir() else _cached_hub_file(name, "config.json", revision)
    if path is None or not Path(path).is_file():
        return None, name
    try:
        return json.loads(Path(path).read_text()), str(path)
    except (OSError, ValueError):
        return None, str(path)


def check_remote_code(name: str, *, revision: str | None, trust_remote_code: bool) -> None:
    """A checkpoint whose config.json maps its classes to its own Python files (``auto_map``) for a
    ``model_type`` transformers does not know needs ``model.trust_remote_code: true``: say so before
    anything loads instead of transformers' ValueError deep in from_pretrained."""
    if trust_remote_code:
        return
    config, path = _model_config_json(name, revision)
    if not config or not config.get("auto_map"):
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING_NAMES:
        log.warning(
            "%s ships its own model code (auto_map) for model_type %r; with model.trust_remote_code off "
            "transformers' built-in %s classes are used instead.",
            name,
            model_type,
            model_type,
        )
        return
    files = sorted({str(v).split(".")[0] + ".py" for v in config["auto_map"].values() if isinstance(v, str)})
    raise PrefoptError(
        f"{name} is a custom-code model: its config.json ({path}) maps model_type {model_type!r}, which "
        f"transformers does not know, to Python code shipped with the checkpoint ({', '.join(files)}), and "
        "model.trust_remote_code is off.",
        where="model.name",
        fix="read that code; if you trust it set model.trust_remote_code: true in the recipe (it is then used "
        "for the policy and the reference model alike).",
    )


def check_model_source(model_cfg) -> None:
    """The checks run before any weights load: pickle-only weights and custom code without opt-in."""
    name = model_cfg.name
    if name.startswith("builtin:"):
        return
    if name.startswith("world:"):
        return  # prefopt builds and saves that checkpoint itself (safetensors)
    allow = getattr(model_cfg, "allow_pickle_weights", False)
    check_remote_code(name, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code)
    if Path(name).expanduser().is_dir():
        check_weight_files(Path(name).expanduser(), allow_pickle=allow)
    else:
        check_hub_weights(name, revision=model_cfg.revision, allow_pickle=allow)


def tokenizer_for(model_cfg):
    """The tokenizer a recipe's ``model:`` section describes (cheap: no weights are read)."""
    check_model_source(model_cfg)
    return load_tokenizer(
        model_cfg.tokenizer or model_cfg.name,
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        chat_template=model_cfg.chat_template,
    )


def load_model(
    model_cfg, *, seed: int, for_training: bool = True, tokenizer=None, num_labels: int | None = None
):
    """Load the policy described by a recipe's ``model:`` section. Returns ``(model, tokenizer)``.

    With ``num_labels`` (a reward model: 1) the checkpoint is loaded as an
    ``AutoModelForSequenceClassification``: its trunk plus a new head, initialised from ``seed``; LoRA
    then uses PEFT's ``SEQ_CLS`` task type, which trains and saves the head in full (``modules_to_save``).

    LoRA wraps the model with PEFT; the TRL trainers then use the adapter-disabled base as the
    reference, so no second copy of the weights exists. With ``quantization:`` the base is loaded in
    4-bit (bitsandbytes) and prepared for k-bit training (QLoRA).
    """
    name = model_cfg.name
    dtype = DTYPES.get(model_cfg.dtype, "auto")
    check_model_source(model_cfg)
    if tokenizer is None:
        tokenizer = tokenizer_for(model_cfg)
    if model_cfg.trust_remote_code:
        log.warning(
            "model.trust_remote_code is TRUE: Python code shipped with %s will be executed. "
            "Only do this for checkpoints you trust.",
            name,
        )
    if name.startswith("builtin:"):
        model = build_builtin(
            name.split(":", 1)[1], seed, dtype if dtype != "auto" else torch.float32, num_labels=num_labels
        )
        if model_cfg.quantization is not None:
            model = _quantize_in_memory(model, model_cfg, num_labels)
    else:
        path = (
            str(registered_checkpoint(name))
            if model_source(name) is not None
            else _resolve_pretrained(name, revision=model_cfg.revision, what="model")
        )
        if num_labels is None:
            model = _from_pretrained(path, model_cfg, dtype)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # a reward model's new head
                model = _from_pretrained(path, model_cfg, dtype, num_labels)
    if model_cfg.quantization is not None:
        guard_bnb_cpu_packing(model)
    if num_labels is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # the classifier pools the last non-pad token
    elif model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if model_cfg.lora is not None and for_training:
        model = apply_lora(model, model_cfg, task_type="CAUSAL_LM" if num_labels is None else "SEQ_CLS")
    return model, tokenizer


def _bnb_config(model_cfg):
    from transformers import BitsAndBytesConfig

    q = model_cfg.quantization
    return BitsAndBytesConfig(
        load_in_4bit=q.load_in_4bit,
        bnb_4bit_quant_type=q.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=DTYPES[q.bnb_4bit_compute_dtype],
        bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
        bnb_4bit_quant_storage=torch.uint8
        if q.bnb_4bit_quant_storage == "uint8"
        else DTYPES[q.bnb_4bit_quant_storage],
    )


def guard_bnb_cpu_packing(model) -> int:
    """Turn off bitsandbytes' CPU inference repacking where it would crash; returns how many layers.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit weight for a faster kernel on the first
    eval-mode, no-grad forward (``Linear4bit.forward`` → ``_convert_weight_packed_for_cpu``). The repack
    assumes ``out_features % 32 == 0`` and ``in_features % blocksize == 0`` and raises a reshape error
    otherwise (e.g. a hidden size of 96 with blocksize 64). Real checkpoints' dimensions are multiples
    of 64, so only small models hit it; for those layers the plain dequantising path is used instead.
    """
    n = 0
    for module in model.modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        state = getattr(module.weight, "quant_state", None)
        blocksize = getattr(state, "blocksize", 64) or 64
        if module.out_features % 32 or module.in_features % blocksize:
            module.support_avx512bf16_for_cpu = False
            n += 1
    if n:
        log.debug("bitsandbytes CPU repacking off for %d 4-bit layer(s) with incompatible shapes", n)
    return n


def _auto_class(num_labels: int | None):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if num_labels is None else AutoModelForSequenceClassification


def _from_pretrained(path: str, model_cfg, dtype, num_labels: int | None = None):
    kwargs: dict[str, Any] = {
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
        "dtype": dtype,
        # safetensors only, unless the recipe opted into pickle weights (check_model_source said why)
        "use_safetensors": None if getattr(model_cfg, "allow_pickle_weights", False) else True,
    }
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if model_cfg.quantization is not None:
        kwargs["quantization_config"] = _bnb_config(model_cfg)
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    return _auto_class(num_labels).from_pretrained(path, **kwargs)


def _quantize_in_memory(model, model_cfg, num_labels: int | None = None):
    """Builtin models have no checkpoint on disk: save to a temp dir and reload in 4-bit."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return _auto_class(num_labels).from_pretrained(tmp, quantization_config=_bnb_config(model_cfg))


def apply_lora(model, model_cfg, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = model_cfg.lora
    if model_cfg.quantization is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=model_cfg.gradient_checkpointing
        )
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,
        lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules,
        bias=lora.bias,
        use_rslora=lora.use_rslora,
        task_type=task_type,  # SEQ_CLS: PEFT adds the classifier head ("score") to modules_to_save
    )
    return get_peft_model(model, cfg)


def load_trained(run_or_model_dir: str | Path, *, merge: bool = False):
    """Reload what ``prefopt train`` saved: a full model, or a PEFT adapter on its base."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    d = Path(run_or_model_dir)
    if (d / "model").is_dir():
        d = d / "model"
    check_weight_files(d, allow_pickle=False, where=str(d))
    if (d / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(d))
        if merge:
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(d))
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(d))
    except Exception:  # noqa: BLE001 - fall back to the builtin tokenizer
        tok = PreTrainedTokenizerFast.from_pretrained(str(BUILTIN_DIR))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def load_reference(model_cfg, *, seed: int):
    """The starting model of a recipe's ``model:`` section, in eval mode: the reference for KL (also for
    reference-free algorithms), without LoRA or 4-bit quantization."""
    ref_cfg = model_cfg.model_copy(update={"lora": None, "quantization": None})
    model, _ = load_model(ref_cfg, seed=seed, for_training=False)
    return model.eval()
