"""``prefopt train --smoke``: run a recipe's own algorithm, loss and TRL mapping for a few steps on the
builtin offline model and a small local sample of each data source — seconds on a CPU, no download.

What :func:`smoke_recipe` keeps from the recipe: ``algorithm``, ``seed``, the whole ``loss:`` block, the
data sources' kinds and options (``keep_ties``, ``transform``, ...), the chat template, the LoRA block
(rank capped at :data:`LORA_R`, same ``lora_alpha / r`` scale), 4-bit quantization (bitsandbytes runs
on CPU; dropped when bitsandbytes is missing) and every ``training:`` key not listed below. So the smoke
run builds the same TRL config class with the same loss parameters as the real run.

What it replaces:

* ``model.name`` → ``builtin:tiny-arith`` in float32, no gradient checkpointing; hub-only settings
  (revision, tokenizer, attention kernel, remote code) are dropped.
* each data source → the fixture for that source in ``prefopt/smoke_fixtures/`` (same published
  schema, read by the same reader; see SOURCES.md there), at most :data:`MAX_ROWS` rows (eval sources
  :data:`EVAL_ROWS`). ``world`` keeps its generator with ``size`` capped; the generic file readers keep a
  local ``path``. ``data.strict`` is turned off (the fixtures carry the formats' known quirks on purpose).
* ``training:`` → :data:`TRAINING` (3 steps, 2 examples per device, max_length 128 / prompt 64, no
  checkpoints, no reporting); the keys in :data:`DROPPED_TRAINING_KEYS` go (global batch and
  accumulation, mixed precision, distributed/compile settings); paged / 8-bit bitsandbytes optimizers
  (CUDA only) become ``adamw_torch``.
* ``output.dir`` → a new directory under the system temp dir (``--output-dir`` still wins); the
  end-of-run evaluation is shrunk.
"""

from __future__ import annotations

import importlib.util
import tempfile
import uuid
from pathlib import Path
from typing import Any

from prefopt.config.recipe import Recipe, load_recipe
from prefopt.core.errors import PrefoptError

FIXTURES_DIR = Path(__file__).resolve().parent / "smoke_fixtures"
FIXTURES: dict[str, str] = {
    "ultrafeedback_h4": "ultrafeedback_h4.jsonl",
    "ultrafeedback_trl": "ultrafeedback_trl.jsonl",
    "ultrafeedback_argilla": "ultrafeedback_argilla.jsonl",
    "ultrafeedback_raw": "ultrafeedback_raw.jsonl",
    "kto_mix": "kto_mix.jsonl",
    "hh_rlhf": "hh_rlhf.jsonl",
    "sharegpt_ranking": "sharegpt_ranking.json",
    "messages_label": "messages_label.json",
    "stack_exchange": "stack_exchange.json",
}
"""Data source name → its fixture file (same schema as the published dataset)."""

GENERIC_SOURCES = ("jsonl", "json", "parquet")
SMOKE_MODEL = "builtin:tiny-arith"
MAX_ROWS = 32
EVAL_ROWS = 4
LORA_R = 8
MAX_STEPS = 3

TRAINING: dict[str, Any] = {
    "max_steps": MAX_STEPS,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "max_length": 128,
    "max_prompt_length": 64,
    "logging_steps": 1,
    "report_to": "none",
    "save_strategy": "no",
    "activation_checkpointing": False,  # TRL's configs default gradient checkpointing on
    "push_to_hub": False,
}
DROPPED_TRAINING_KEYS = (
    "global_batch_size",
    "gradient_accumulation_steps",
    "bf16",
    "fp16",
    "bf16_full_eval",
    "fp16_full_eval",
    "tf32",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "activation_checkpointing_kwargs",
    "deepspeed",
    "fsdp",
    "fsdp_config",
    "torch_compile",
    "torch_compile_backend",
    "torch_compile_mode",
    "use_liger_kernel",
    "liger_kernel_config",
    "load_best_model_at_end",
    "metric_for_best_model",
    "hub_model_id",
    "hub_strategy",
    "hub_private_repo",
    "dataloader_num_workers",
    "ddp_backend",
    "use_cpu",
)
_BUILTIN_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}


def smoke_recipe(recipe: Recipe) -> Recipe:
    """The smoke version of ``recipe`` (a new, validated Recipe; ``recipe`` is not modified)."""
    data = recipe.to_dict()
    # a fresh directory under the system temp dir, created only when the run starts
    out_dir = str(Path(tempfile.gettempdir()) / f"prefopt-smoke-{recipe.algorithm}-{uuid.uuid4().hex[:12]}")
    data["model"] = _smoke_model(recipe)
    data["data"] = _smoke_data(recipe, data["data"])
    data["training"] = _smoke_training(recipe.training)
    data["output"] = {**data["output"], "dir": out_dir}
    ev = data["evaluation"]
    data["evaluation"] = {
        **ev,
        "num_samples": 1,
        "max_prompts": min(ev["max_prompts"], 16),
        "max_new_tokens": min(ev["max_new_tokens"], 16),
    }
    if data["reference_cache"]["enabled"]:
        data["reference_cache"] = {**data["reference_cache"], "dir": str(Path(out_dir) / "refcache")}
    where = f"{recipe.source_path or '<recipe>'} (--smoke)"
    try:
        smoke = load_recipe(data=data)
    except PrefoptError as err:
        raise PrefoptError(f"the smoke version of the recipe is invalid: {err}", where=where) from None
    smoke._source_path = recipe.source_path
    return smoke


def _smoke_model(recipe: Recipe) -> dict[str, Any]:
    m = recipe.model
    lora = None
    if m.lora is not None:
        r = min(m.lora.r, LORA_R)
        targets = m.lora.target_modules
        if isinstance(targets, list) and not set(targets) <= _BUILTIN_LINEAR:
            targets = "all-linear"  # the recipe's module names do not exist in the builtin (Llama) model
        lora = {
            **m.lora.model_dump(),
            "r": r,
            "lora_alpha": m.lora.lora_alpha * r / m.lora.r,
            "target_modules": targets,
        }
    quant = None
    if m.quantization is not None and importlib.util.find_spec("bitsandbytes") is not None:
        quant = {**m.quantization.model_dump(), "bnb_4bit_compute_dtype": "float32"}
    return {
        "name": SMOKE_MODEL,
        "dtype": "float32",
        "chat_template": m.chat_template,
        "gradient_checkpointing": False,
        "lora": lora,
        "quantization": quant if lora is not None else None,
    }


def _smoke_data(recipe: Recipe, data: dict[str, Any]) -> dict[str, Any]:
    out = {**data, "strict": False}
    out["train"] = [_smoke_source(recipe, src, MAX_ROWS, "data.train") for src in recipe.data.train]
    if recipe.data.eval:
        out["eval"] = [_smoke_source(recipe, src, EVAL_ROWS, "data.eval") for src in recipe.data.eval]
    return out


def _smoke_source(recipe: Recipe, src, rows: int, where: str) -> dict[str, Any]:
    opts = {k: v for k, v in src.options.items() if k not in ("config", "revision", "data_dir")}
    name = src.source
    if name in FIXTURES:
        return {"source": name, "path": str(FIXTURES_DIR / FIXTURES[name]), "max_rows": rows, **opts}
    if name == "world":
        size = min(int(opts.get("size") or rows), rows)
        return {"source": name, "split": src.split, "max_rows": rows, **opts, "size": size}
    if name in GENERIC_SOURCES and src.path:
        local = Path(recipe.resolve_path(src.path))
        if local.exists():
            return {"source": name, "path": str(local), "split": src.split, "max_rows": rows, **opts}
    raise PrefoptError(
        f'--smoke has no local sample for the data source "{name}" (path {src.path!r}).',
        where=where,
        fix=f"smoke runs use the fixtures of {', '.join(sorted(FIXTURES))}, the world source, or a generic "
        f"{'/'.join(GENERIC_SOURCES)} source with a local path.",
    )


def _smoke_training(training: dict[str, Any]) -> dict[str, Any]:
    t = {k: v for k, v in training.items() if k not in DROPPED_TRAINING_KEYS}
    optim = str(t.get("optim", ""))
    if "paged" in optim or "bnb" in optim or "8bit" in optim:
        t["optim"] = "adamw_torch"  # bitsandbytes' paged / 8-bit optimizers need CUDA
    t.update(TRAINING)
    if t.get("eval_strategy", "no") != "no":
        t["eval_steps"] = MAX_STEPS  # one evaluation, at the last step
    return t
