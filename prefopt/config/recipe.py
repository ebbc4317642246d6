"""The recipe schema: one class per section, unknown keys rejected, every field documented.

A recipe is a YAML file with the sections ``algorithm``, ``seed``, ``model``, ``data``, ``loss``,
``training``, ``output`` (and optionally ``health``, ``evaluation``, ``reference_cache``).
Validation happens here, before any model or dataset is loaded: a misspelled key, a wrong type,
an out-of-range value or an unknown algorithm fails with the file name, the dotted key and a
suggestion.

Conventions (see ``docs/recipes.md``):

* ``training:`` takes TRL / ``transformers.TrainingArguments`` field names verbatim and is checked
  against the TRL config class of the selected algorithm (``DPOConfig``, ``KTOConfig``,
  ``ORPOConfig``, ``CPOConfig``). prefopt adds one key of its own, ``global_batch_size``.
* ``model.lora:`` takes PEFT ``LoraConfig`` names; ``model.quantization:`` takes bitsandbytes names.
* ``loss:`` takes the paper's symbols: β (``beta``), τ (``tau``), λ (``lam``), γ/β (``gamma_beta_ratio``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prefopt.config.algorithms import LOSS_CLASSES, AlgorithmName, LossParams, algorithm_names, get_spec
from prefopt.config.fidelity import check_recipe, loss_key_hint
from prefopt.config.integrations import on_recipe_loaded  # report_to packages, bitsandbytes, data paths
from prefopt.config.schema import StrictModel, explain_validation_error
from prefopt.core.errors import PrefoptError, did_you_mean

_Section = StrictModel


# --------------------------------------------------------------------------------------------- model
class LoraSection(_Section):
    """PEFT ``LoraConfig`` fields. With LoRA the reference model is the base model with the adapter
    disabled, so no second copy of the weights is held in memory."""

    r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = lora_alpha / r).")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | str = Field(
        "all-linear", description='Module names to adapt, or "all-linear" (PEFT\'s shortcut).'
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False


class QuantizationSection(_Section):
    """bitsandbytes ``BitsAndBytesConfig`` fields (QLoRA). Requires a ``lora:`` block."""

    load_in_4bit: bool = True
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_quant_storage: Literal["uint8", "float32", "bfloat16", "float16"] = Field(
        "uint8",
        description=(
            "dtype the packed 4-bit weights are stored in. ZeRO-3 and FSDP shard them only when it equals "
            "the training dtype (e.g. bfloat16); uint8 (bitsandbytes' default) suits DDP and ZeRO-2."
        ),
    )


class ModelSection(_Section):
    name: str = Field(
        ...,
        description=(
            "Hub id (loaded from the local HF cache when offline), local path, 'builtin:<name>' for the "
            "offline model family shipped in the package, or 'world:<task>' for the ground-truth world's "
            "SFT reference policy (built and cached on first use)."
        ),
    )
    revision: str | None = Field(None, description="Hub revision (commit, tag or branch).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype; 'auto' keeps the checkpoint's."
    )
    trust_remote_code: bool = Field(
        False,
        description="Execute model code from the checkpoint (config.json auto_map). Off unless set; logged "
        "loudly when on; passed to the reference model too.",
    )
    allow_pickle_weights: bool = Field(
        False,
        description="Load a checkpoint whose weights exist only in pickle format (pytorch_model.bin, .pt, "
        ".pth, .ckpt). Off: such a checkpoint is refused before loading, since unpickling can run code.",
    )
    attn_implementation: str | None = Field(None, description="e.g. 'sdpa', 'eager', 'flash_attention_2'.")
    tokenizer: str | None = Field(None, description="Tokenizer source when it differs from `name`.")
    chat_template: str | None = Field(None, description="A Jinja chat template overriding the tokenizer's.")
    gradient_checkpointing: bool = False
    lora: LoraSection | None = None
    quantization: QuantizationSection | None = None

    @model_validator(mode="after")
    def _qlora_needs_lora(self):
        if self.quantization is not None and self.lora is None:
            raise ValueError(
                "model.quantization (4-bit) needs a model.lora block: a quantized base can only be trained "
                "through an adapter. Add `lora: {r: 16, lora_alpha: 32}` under model."
            )
        return self


# --------------------------------------------------------------------------------------------- data
class SourceSection(BaseModel):
    """One data source. ``source`` names a registered reader (see ``prefopt data sources``); the other
    keys are that reader's options (checked by the reader when the data is loaded, before any model)."""

    model_config = ConfigDict(extra="allow")

    source: str = Field(
        ..., description="Registered source name, e.g. ultrafeedback_h4, hh_rlhf, jsonl, world."
    )
    path: str | None = Field(
        None, description="Local file/dir (relative to the recipe file) or hub dataset id."
    )
    split: str | None = None
    max_rows: int | None = Field(None, gt=0, description="Read at most this many rows (after the reader).")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataSection(_Section):
    train: list[SourceSection] = Field(..., min_length=1, description="Training sources, concatenated.")
    eval: list[SourceSection] | None = Field(None, description="Held-out sources; else split from train.")
    eval_fraction: float = Field(
        0.0, ge=0, lt=1, description="When `eval` is absent: fraction of prompt groups held out (by prompt)."
    )
    transform: Literal["none", "unpair", "pair"] = Field(
        "none",
        description=(
            "Convert between data kinds: 'unpair' turns pairs into desirable/undesirable rows (for KTO), "
            "'pair' groups unpaired rows by prompt (for DPO/IPO/ORPO/SimPO)."
        ),
    )
    pair_mode: Literal["one_to_one", "all"] = Field(
        "one_to_one", description="With transform: pair — one pair per desirable row, or every D×U pair."
    )
    dedupe: bool = Field(True, description="Drop exact duplicate rows (counted in the drop report).")
    min_score_margin: float | None = Field(
        None, description="Drop pairs whose score_chosen - score_rejected is below this (needs scores)."
    )
    strict: bool = Field(False, description="Turn any dropped row into an error.")
    shuffle: bool = True


# --------------------------------------------------------------------------------------------- output
class OutputSection(_Section):
    dir: str = Field(
        "runs/{algorithm}-{timestamp}", description="Run directory ({algorithm}, {timestamp}, {seed})."
    )
    overwrite: bool = Field(False, description="Allow writing into a directory holding a finished run.")
    save_model: bool = Field(True, description="Save the final model/adapter (safetensors).")


class HealthSection(_Section):
    """Training-health thresholds (see docs/health.md). Each warning is logged and written to
    metrics.jsonl with the numbers that triggered it; ``stop_on`` lists warnings that stop training."""

    margin_stuck_abs: float = Field(0.01, ge=0, description="|mean reward margin| below this is 'stuck'.")
    margin_stuck_steps: int = Field(
        10, gt=0, description="...for this many consecutive logged steps while loss falls."
    )
    logp_collapse_per_token: float = Field(
        -0.5,
        description="Both chosen and rejected log-probs below the reference's by more than this many nats per "
        "token = collapse (DPO/IPO/KTO: TRL's β·log-ratio rewards over the data's mean reply length; "
        "ORPO/SimPO: the per-token average log-probs against their first logged values).",
    )
    logp_collapse: float | None = Field(
        None,
        description="Optional second bound in nats per sequence (both shifts below it = collapse); off by default.",
    )
    desirable_falling_per_token: float | None = Field(
        -0.1,
        description="KTO: the desirable replies' log-ratio against the reference, nats per token averaged over "
        "the last 10 logs, below this warns (desirable_falling); null turns it off.",
    )
    overfit_eval_rise: float = Field(
        0.1,
        gt=0,
        description="Needs an eval split (evaluated during training): the eval loss risen this fraction above "
        "its best while the train loss kept falling = over-fitting.",
    )
    kl_max: float | None = Field(
        None, gt=0, description="KL(policy‖reference) above this warns (nats/sequence)."
    )
    length_drift: float = Field(
        0.5, gt=0, description="Relative change of mean completion length that warns."
    )
    probe_every: int = Field(
        0,
        ge=0,
        description="Every this many steps sample probe_prompts held-out prompts (length, and KL); 0 = off.",
    )
    probe_prompts: int = Field(8, gt=0)
    probe_max_new_tokens: int = Field(64, gt=0)
    stop_on: list[
        Literal[
            "margin_stuck",
            "logp_collapse",
            "desirable_falling",
            "overfit",
            "kl_high",
            "length_drift",
            "nonfinite",
        ]
    ] = Field(default_factory=lambda: ["nonfinite"], description="Warnings that stop training.")


class EvaluationSection(_Section):
    """End-of-training evaluation (``prefopt eval`` runs the same)."""

    enabled: bool = True
    num_samples: int = Field(1, gt=0, description="Sampled completions per held-out prompt.")
    max_prompts: int = Field(200, gt=0, description="Held-out prompts used for sampling metrics.")
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, ge=0)
    max_pairs: int = Field(
        1000, gt=0, description="Held-out pairs scored for accuracy/margins/log-prob shifts."
    )
    batch_size: int = Field(
        256, gt=0, description="Rows per forward/generation batch (lower for large models)."
    )
    world_prompts: int = Field(
        300, gt=0, description="Held-out world prompts for the true reward (4 samples + greedy each)."
    )
    judge: dict[str, Any] | None = Field(
        None,
        description="A judge: block (docs/judges.md): at the end of training the policy's win rate against its "
        "reference on the held-out prompts, with the length-controlled figure (eval.json `judged`, report.md). "
        "Checked before any model loads; paths relative to the recipe's folder.",
    )


class ReferenceCacheSection(_Section):
    enabled: bool = Field(False, description="Reuse reference log-probs across runs (keyed by content).")
    dir: str | None = Field(
        None, description="Cache directory (default: $PREFOPT_CACHE or ~/.cache/prefopt/ref)."
    )


class OnlineSection(_Section):
    """What an online algorithm (``algorithm: online_dpo``) samples each step, who judges it, and the
    defences against over-optimising the judge (docs/losses.md, "Online DPO")."""

    k: int = Field(4, ge=2, description="Replies sampled per prompt each step (best vs worst are paired).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the current policy.")
    max_new_tokens: int = Field(64, gt=0, description="Longest sampled reply, in tokens.")
    batch_size: int = Field(64, gt=0, description="Sequences per generation forward (transformers engine).")
    judge: dict[str, Any] = Field(
        ...,
        description='A judge block (docs/judges.md), e.g. {type: callable, function: "prefopt.world:TASKS.arith.reward"}.',
    )
    length_penalty: float = Field(
        0.0, ge=0, description="Defence: α, subtracted from the judge's score per reply token (0 = off)."
    )
    kl_budget: float | None = Field(
        None,
        gt=0,
        description="Defence: stop training when the per-step sampled KL(policy‖reference) passes this many "
        "nats per sequence (health kl_high, stopping).",
    )


# --------------------------------------------------------------------------------------------- recipe
class Recipe(_Section):
    algorithm: AlgorithmName
    seed: int = Field(42, description="Seeds model init (builtin models), data order and sampling.")
    model: ModelSection
    data: DataSection
    loss: dict[str, Any] = Field(default_factory=dict, description="The algorithm's own loss parameters.")
    training: dict[str, Any] = Field(default_factory=dict, description="TRL config fields, verbatim.")
    output: OutputSection = Field(default_factory=OutputSection)
    health: HealthSection = Field(default_factory=HealthSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    reference_cache: ReferenceCacheSection = Field(default_factory=ReferenceCacheSection)
    online: OnlineSection | None = Field(
        None, description="Online algorithms only: sampling, judge, defences."
    )

    # where the recipe came from (not a YAML key)
    _source_path: Path | None = None

    @property
    def source_path(self) -> Path | None:
        return self._source_path

    @property
    def loss_params(self) -> LossParams:
        return get_spec(self.algorithm).loss_params(self.loss)

    @field_validator("training")
    @classmethod
    def _no_nested_training(cls, v):
        return dict(v or {})

    def resolve_path(self, p: str | None) -> str | None:
        """Resolve a recipe-relative path against the recipe file's folder (not the working dir)."""
        if p is None:
            return None
        path = Path(p).expanduser()
        if path.is_absolute() or self._source_path is None:
            return str(path)
        candidate = (self._source_path.parent / path).resolve()
        return str(candidate)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


# --------------------------------------------------------------------------------------------- loading
PREFOPT_TRAINING_KEYS = {
    "global_batch_size": "prefopt: the global batch (per-device × processes × accumulation) to hold fixed",
    "max_prompt_length": "prefopt tokenisation: longest prompt kept, in tokens (left-truncated... see docs)",
    "prefix_sharing": "prefopt: compute each pair's prompt once (auto | true | false; docs/performance.md)",
}


@functools.cache
def trl_config_fields(algorithm: str) -> dict[str, Any]:
    """Field name → dataclass field of the TRL config class the algorithm's adapter uses."""
    cls = get_spec(algorithm).config_class()
    return {f.name: f for f in dataclasses.fields(cls)}


def _explain_pydantic(err: ValidationError, data: dict, where: str) -> PrefoptError:
    return explain_validation_error(err, where, Recipe, choices={"algorithm": algorithm_names()})


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value read as YAML, so 1e-6 / true / [a, b] are typed)."""
    if "=" not in text:
        raise PrefoptError(
            f'override "{text}" is not of the form section.key=value.',
            where="--set",
            fix="write e.g. --set loss.beta=0.2 or --set training.learning_rate=1e-6",
        )
    key, _, raw = text.partition("=")
    try:
        # read like a recipe value: 1e-6 is a float, "1234e56" (quoted) a string
        value = safe_load(raw, where="--set") if raw.strip() else None
    except PrefoptError as err:
        if "YAML syntax error" not in str(err):
            raise
        value = raw
    return [p for p in key.strip().split(".") if p], value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set`` overrides; list items are addressed by index (``data.train.0.size=64``)."""
    data = copy.deepcopy(data)
    for text in overrides or []:
        path, value = parse_override(text)
        cur: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(cur, list):
                if not part.isdigit() or int(part) >= len(cur):
                    raise PrefoptError(
                        f'cannot set "{".".join(path)}": "{part}" is not an index of that list (it has {len(cur)} items).',
                        where="--set",
                    )
                if last:
                    cur[int(part)] = value
                else:
                    cur = cur[int(part)]
                continue
            if not isinstance(cur, dict):
                raise PrefoptError(
                    f'cannot set "{".".join(path)}": "{path[i - 1]}" is not a section.', where="--set"
                )
            if last:
                cur[part] = value
            else:
                if cur.get(part) is None:
                    cur[part] = {}
                cur = cur[part]
    return data


# ------------------------------------------------------------------------------------------ YAML
MAX_YAML_NODES = 100_000
"""The most values a recipe may expand to once its aliases are followed (real recipes hold a few hundred);
a "billion laughs" file of nested anchors is refused before anything expands it."""

_NUMBER_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
"""YAML 1.2 / JSON floats that YAML 1.1 reads as strings: 1e-6, 5E-7, 2.0e6 (no dot or no exponent sign)."""


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int):
        self.key, self.first, self.second = key, first, second


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` for recipes: a key given twice in one mapping is an error (PyYAML keeps the
    last silently), and a plain (unquoted) scalar written like ``1e-6`` is a float as in YAML 1.2 — a
    quoted scalar is always a string. Merge keys (``<<: *base``) still override as YAML defines."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


class RecipeDumper(yaml.SafeDumper):
    """Writes what :class:`RecipeLoader` reads back unchanged (a string like "1234e56" is quoted)."""


for _cls in (RecipeLoader, RecipeDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _NUMBER_12, list("-+0123456789."))


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many nodes ``root`` holds with every alias followed (shared nodes counted once per use).
    Raises ``ValueError`` above ``limit`` or for an alias that contains itself; never expands."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ValueError(f"the anchor at line {node.start_mark.line + 1} contains an alias to itself")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        active.discard(key)
        if total > limit:
            raise ValueError(
                f"it expands to more than {limit:,} values once its aliases are followed "
                f"(the node at line {node.start_mark.line + 1})"
            )
        sizes[key] = total
        return total

    return size(root)


def safe_load(text: str, *, where: str, what: str = "YAML") -> Any:
    """Parse ``text`` with :class:`RecipeLoader`: duplicate keys, alias bombs and syntax errors become
    a :class:`PrefoptError` naming ``where`` and the line."""
    loader = RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, MAX_YAML_NODES)
        return loader.construct_document(node)
    except _DuplicateKey as dup:
        raise PrefoptError(
            f'key "{dup.key}" is given twice in the same mapping (lines {dup.first} and {dup.second}); YAML '
            "would keep only the second silently.",
            where=where,
            fix="keep one of them (merge the two blocks into one).",
        ) from None
    except ValueError as err:
        raise PrefoptError(
            f"the {what} is refused: {err}.",
            where=where,
            fix="write the values out; anchors and aliases are for sharing a block, not for multiplying it.",
        ) from None
    except RecursionError:
        raise PrefoptError(f"the {what} is nested too deeply to read.", where=where) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PrefoptError(
            f"YAML syntax error{line}: {problem}.",
            where=where,
            fix="check indentation and quoting on that line (values containing ':' or '#' need quotes).",
        ) from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise PrefoptError(
            f"recipe file {path} does not exist.",
            fix="check the path given to --config (it is read relative to the working directory).",
        )
    if path.is_dir():
        raise PrefoptError(
            f"{path} is a directory, not a recipe file.",
            fix="give the recipe's .yaml file to --config (e.g. configs/recipes/quickstart/dpo.yaml).",
        )
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PrefoptError(
            f"recipe file {path} cannot be read ({err.strerror or err}).", fix="check its permissions."
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        col = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise PrefoptError(
            f"byte 0x{raw[err.start]:02x} at line {line}, column {col} is not UTF-8 (recipes are read as UTF-8).",
            where=str(path),
            fix="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).",
        ) from None
    data = safe_load(text, where=str(path), what="recipe")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PrefoptError(
            f"a recipe must be a mapping of sections, got {type(data).__name__}.", where=str(path)
        )
    return data


def load_recipe(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    data: dict | None = None,
    *,
    check_device: bool | None = None,
) -> Recipe:
    """Read, override and validate a recipe. Raises :class:`PrefoptError` with the file and key.

    ``check_device`` (default: when ``path`` is given, i.e. a recipe to train) refuses ``fp16``/``bf16``
    that this machine cannot run; a recipe read back from a run (``data=``) is not checked."""
    where = str(path) if path is not None else "<recipe>"
    raw = read_yaml(path) if path is not None else copy.deepcopy(data or {})
    raw = apply_overrides(raw, overrides or [])
    try:
        recipe = Recipe(**raw)
    except ValidationError as err:
        raise _explain_pydantic(err, raw, where) from None
    except TypeError as err:  # e.g. a section that is a list instead of a mapping
        raise PrefoptError(str(err), where=where) from None
    if path is not None:
        recipe._source_path = Path(path).resolve()
        _resolve_model_paths(recipe, where)
    _validate_loss(recipe, where)
    _validate_online(recipe, where)
    # The fidelity guard runs before the generic training-key check so that a TRL knob prefopt owns
    # (training.beta, training.simpo_gamma, ...) gets its specific message rather than "unknown key".
    check_recipe(recipe, where=where)
    _validate_training(recipe, where)
    if check_device if check_device is not None else path is not None:
        _check_precision(recipe, where)

    on_recipe_loaded(recipe, where)
    return recipe


def _resolve_model_paths(recipe: Recipe, where: str) -> None:
    """Make a relative local ``model.name`` / ``model.tokenizer`` absolute against the recipe's folder,
    as data paths are. A name that is no path there is a hub id — unless it names a folder in the
    working directory, which is refused rather than silently preferred (or silently ignored)."""
    base = recipe.source_path.parent
    for key in ("name", "tokenizer"):
        value = getattr(recipe.model, key)
        if not value or value.startswith(("builtin:", "world:")):
            continue
        p = Path(value).expanduser()
        if p.is_absolute():
            continue
        candidate = (base / p).resolve()
        if candidate.exists():
            setattr(recipe.model, key, str(candidate))
        elif value.startswith((".", "~")) or Path(value).exists():
            raise PrefoptError(
                f'"model.{key}" = "{value}": there is no {candidate} (a relative model path is resolved '
                "against the recipe's folder, like data paths)"
                + (
                    f"; {Path(value).resolve()} in the working directory is not used."
                    if Path(value).exists()
                    else "."
                ),
                where=where,
                fix=f"write the path relative to {base} or as an absolute path.",
            )


def _has_fp16_device() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    for name in ("xpu", "npu", "mlu", "musa", "hpu", "mps"):
        backend = getattr(torch, name, None) or getattr(torch.backends, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return False


def _has_bf16_device() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    for name in ("xpu", "npu", "mlu", "musa", "hpu"):
        backend = getattr(torch, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return False


def _check_precision(recipe: Recipe, where: str) -> None:
    """``fp16``/``bf16`` mixed precision the machine cannot run fails here, not after the data work."""
    t = recipe.training
    for key in ("fp16", "fp16_full_eval"):
        if t.get(key) is True and not _has_fp16_device():
            raise PrefoptError(
                f'"training.{key}" = true, but this machine has no GPU (fp16 mixed precision needs CUDA or '
                "another accelerator).",
                where=where,
                fix=f"remove training.{key} (float32 on this CPU), or train on a GPU machine; "
                "`--smoke` drops it to try the recipe here.",
            )
    for key in ("bf16", "bf16_full_eval"):
        if t.get(key) is True and not t.get("use_cpu") and not _has_bf16_device():
            raise PrefoptError(
                f'"training.{key}" = true, but this machine has no accelerator with bfloat16 support.',
                where=where,
                fix=f"remove training.{key} (or set model.dtype: bfloat16 for bf16 weights), add "
                "training.use_cpu: true for bf16 autocast on the CPU, or train on a GPU that supports "
                "bf16; `--smoke` drops it to try the recipe here.",
            )


def _validate_loss(recipe: Recipe, where: str) -> None:
    cls = LOSS_CLASSES[recipe.algorithm]
    try:
        cls(**recipe.loss)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                hint = _loss_key_hint(recipe.algorithm, key, e.get("input"), recipe.loss)
                lines.append(
                    f'unknown loss option "loss.{key}" for algorithm {recipe.algorithm}.'
                    f"{hint or did_you_mean(key, cls.model_fields)} "
                    f"{recipe.algorithm} takes: {', '.join(cls.model_fields)}."
                )
            else:
                lines.append(f'"loss.{key}" = {e.get("input")!r}: {e["msg"].removeprefix("Value error, ")}.')
        raise PrefoptError(" ".join(lines), where=where) from None


def _validate_online(recipe: Recipe, where: str) -> None:
    """An online algorithm needs its ``online:`` block (the judge above all); an offline one takes none."""
    online = get_spec(recipe.algorithm).samples_online
    if online and recipe.online is None:
        raise PrefoptError(
            f"algorithm {recipe.algorithm} samples its training pairs from the policy each step and needs a "
            "judge to rank them, but the recipe has no online block.",
            where=f"{where}: online",
            fix='add `online: {k: 4, judge: {type: callable, function: "prefopt.world:TASKS.arith.reward"}}` '
            "(any judge block of docs/judges.md).",
        )
    if not online and recipe.online is not None:
        raise PrefoptError(
            f"algorithm {recipe.algorithm} trains on the data as given; the online block is only read by "
            "online algorithms.",
            where=f"{where}: online",
            fix="remove the online block, or choose an online algorithm.",
        )
    if online and recipe.reference_cache.enabled:
        raise PrefoptError(
            "the reference log-prob cache stores log-probs of fixed data; online pairs are new every step.",
            where=f"{where}: reference_cache.enabled",
            fix="set reference_cache.enabled: false (the reference is computed live).",
        )


def _loss_key_hint(algorithm: str, key: str, value: Any = None, loss: dict | None = None) -> str:
    return loss_key_hint(algorithm, key, value, loss)


def _validate_training(recipe: Recipe, where: str) -> None:
    fields = trl_config_fields(recipe.algorithm)
    for key, value in recipe.training.items():
        if key == "prefix_sharing" and value not in ("auto", True, False):
            raise PrefoptError(
                f"training.prefix_sharing = {value!r}: expected auto, true or false.",
                where=where,
                fix="remove it (auto: on where prefix sharing is proven exact), or set true / false.",
            )
        if key in PREFOPT_TRAINING_KEYS:
            continue
        if key not in fields:
            raise PrefoptError(
                f'unknown key "training.{key}" for {recipe.algorithm}.'
                f"{did_you_mean(key, list(fields) + list(PREFOPT_TRAINING_KEYS))} "
                f"`training:` takes the fields of TRL's {_config_name(recipe.algorithm)} "
                "(TrainingArguments names) plus prefopt's global_batch_size, max_prompt_length and prefix_sharing.",
                where=where,
            )
        _check_type(key, value, fields[key], where)
    _check_numbers(recipe, where)


def _config_name(algorithm: str) -> str:
    return get_spec(algorithm).config_class().__name__


def _check_type(key: str, value: Any, field: dataclasses.Field, where: str) -> None:
    import typing

    if value is None:
        return
    ann = field.type
    if isinstance(ann, str):
        text = ann
    else:
        text = str(ann)
    wants = []
    for name, typ in (("int", int), ("float", float), ("bool", bool), ("str", str)):
        if (
            name in text.replace("typing.", "").split("[")[0]
            or text.startswith(name)
            or f"{name} |" in text
            or f"| {name}" in text
        ):
            wants.append(typ)
    if not wants or "dict" in text or "list" in text or "Any" in text:
        return
    ok = False
    for typ in wants:
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            ok = True
        elif typ is int and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        elif typ is bool and isinstance(value, bool):
            ok = True
        elif typ is str and isinstance(value, str):
            ok = True
    if not ok:
        raise PrefoptError(
            f'"training.{key}" = {value!r} has the wrong type: TRL expects {text}.',
            where=where,
            fix=f"write a value of type {' or '.join(t.__name__ for t in wants)}.",
        )
    del typing


def _check_numbers(recipe: Recipe, where: str) -> None:
    t = recipe.training
    for key, value in t.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise PrefoptError(
                f'"training.{key}" = {value!r} is not a finite number.',
                where=where,
                fix="write a number (YAML reads .nan and .inf as NaN and infinity).",
            )
    if "trust_remote_code" in t:
        raise PrefoptError(
            '"training.trust_remote_code" is set by prefopt from model.trust_remote_code (for the policy '
            "and the reference model alike).",
            where=where,
            fix="remove it from training: and set model.trust_remote_code instead.",
        )
    epochs = t.get("num_train_epochs")
    if epochs is not None and epochs <= 0:
        raise PrefoptError(
            f'"training.num_train_epochs" = {epochs!r} must be > 0: the run would save the starting model '
            "untrained as if it had finished.",
            where=where,
            fix="set num_train_epochs to 1 or more (fractions are allowed), or set max_steps.",
        )
    steps = t.get("max_steps")
    if steps is not None and (steps == 0 or steps < -1):
        raise PrefoptError(
            f'"training.max_steps" = {steps!r}: give a positive number of optimiser steps, or -1 (TRL\'s '
            "default) to train for num_train_epochs.",
            where=where,
            fix="e.g. max_steps: 1000, or remove it to train num_train_epochs epochs.",
        )
    for key in ("max_length", "max_prompt_length", "max_completion_length"):
        v = t.get(key)
        if v is not None and v <= 0:
            raise PrefoptError(
                f'"training.{key}" = {v!r} must be a positive number of tokens (or null for no limit).',
                where=where,
                fix=f"e.g. {key}: 1024.",
            )
    lr = t.get("learning_rate")
    if lr is not None and lr <= 0:
        raise PrefoptError(
            f'"training.learning_rate" = {lr!r} must be > 0.',
            where=where,
            fix="typical values are 5e-7 to 5e-6 for 7B models.",
        )
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "global_batch_size"):
        v = t.get(key)
        if v is not None and v <= 0:
            raise PrefoptError(f'"training.{key}" = {v!r} must be a positive integer.', where=where)
    ml, mpl = t.get("max_length"), t.get("max_prompt_length")
    if ml is not None and mpl is not None and mpl >= ml:
        raise PrefoptError(
            f'"training.max_prompt_length" = {mpl} is not below "training.max_length" = {ml}: '
            "no completion token would survive truncation.",
            where=where,
            fix="make max_prompt_length smaller than max_length (e.g. half of it).",
        )


def dump_resolved(recipe: Recipe) -> str:
    return yaml.dump(recipe.to_dict(), Dumper=RecipeDumper, sort_keys=False)
