"""Algorithm adapters: one small module per algorithm, each mapping a validated Recipe onto one TRL
trainer, and a registry.

An adapter translates and nothing else: ``trl_config`` builds the TRL config (loss parameters as TRL
expects them), ``trainer_class`` names the trainer (a :mod:`prefopt.trainers` subclass where TRL's
behaviour differs from the paper). ``describe`` is what ``prefopt train --dry-run`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from prefopt.errors import PrefoptError, did_you_mean


@dataclass(frozen=True)
class Adapter:
    """Base adapter. Subclasses set the class attributes and implement ``loss_kwargs``."""

    name: ClassVar[str]
    data_kind: ClassVar[str]  # "paired" | "unpaired"
    uses_reference: ClassVar[bool]
    trl_trainer: ClassVar[str]  # dotted path of the TRL class the prefopt trainer derives from
    paper: ClassVar[str]

    # ---- what subclasses provide
    @classmethod
    def config_class(cls) -> type:
        raise NotImplementedError

    @classmethod
    def trainer_class(cls, recipe) -> type:
        raise NotImplementedError

    @classmethod
    def loss_kwargs(cls, recipe) -> dict[str, Any]:
        """The loss parameters exactly as the TRL config receives them."""
        raise NotImplementedError

    @classmethod
    def overrides(cls, recipe) -> list[str]:
        """Where prefopt departs from stock TRL for this recipe (shown by --dry-run and in the manifest)."""
        return [
            "tokenisation: prefopt pre-tokenises (prefopt.tokenization); TRL's own tokenisation is skipped"
        ]

    @classmethod
    def depends_on_data(cls, recipe) -> bool:
        """Whether :meth:`settle_on_data` decides something from the data for this recipe (``--dry-run``
        then reads the data, without loading a model)."""
        return False

    @classmethod
    def settle_on_data(cls, recipe, train_ds) -> tuple[Any, dict[str, Any] | None]:
        """Settings that depend on the training data (KTO's class weights on the label counts): the recipe
        with them filled in, and what was decided (logged, in manifest.json and in ``--dry-run``), or
        ``None`` when the algorithm has none. Called on the canonical training rows before the TRL config
        is built."""
        return recipe, None

    # ---- shared
    @classmethod
    def trl_config(cls, recipe, *, output_dir: str, training: dict[str, Any] | None = None):
        from prefopt.recipe import PREFOPT_TRAINING_KEYS

        kwargs = {
            k: v
            for k, v in (training if training is not None else recipe.training).items()
            if k not in PREFOPT_TRAINING_KEYS
        }
        kwargs.setdefault("seed", recipe.seed)
        kwargs.setdefault("data_seed", recipe.seed)
        kwargs.setdefault("report_to", "none")
        # Periodic checkpoints so that a killed run resumes (prefopt train --resume); SIGTERM/SIGINT
        # always save one. Recipes for large models set their own save_steps / save_total_limit.
        kwargs.setdefault("save_strategy", "steps")
        kwargs.setdefault("save_steps", 500)
        kwargs.setdefault("save_total_limit", 2)
        kwargs.setdefault("save_only_model", False)
        kwargs.setdefault("logging_strategy", "steps")
        kwargs.setdefault("logging_steps", 1)
        kwargs.setdefault("remove_unused_columns", False)
        kwargs.setdefault("dataloader_num_workers", 0)
        # TRL 1.x turns gradient checkpointing on by default (slower steps); prefopt follows the recipe.
        _checkpointing(kwargs, recipe.model.gradient_checkpointing, cls.config_class())
        # TRL's configs default to bf16=True, which transformers refuses on CPU: mixed precision only
        # where the recipe asks for bfloat16 and a GPU supports it.
        kwargs.setdefault("bf16", recipe.model.dtype == "bfloat16" and _cuda_bf16())
        # pinned memory needs an accelerator (torch warns on every dataloader otherwise)
        kwargs.setdefault("dataloader_pin_memory", _cuda())
        kwargs.update(cls.loss_kwargs(recipe))
        kwargs["trust_remote_code"] = recipe.model.trust_remote_code  # TRL builds the reference with it
        kwargs["output_dir"] = output_dir
        return cls.config_class()(**kwargs)

    @classmethod
    def describe(cls, recipe) -> dict[str, Any]:
        trainer = cls.trainer_class(recipe)
        return {
            "algorithm": cls.name,
            "paper": cls.paper,
            "trainer": f"{trainer.__module__}.{trainer.__qualname__}",
            "trl_base_trainer": cls.trl_trainer,
            "config_class": f"{cls.config_class().__module__}.{cls.config_class().__qualname__}",
            "data_kind": cls.data_kind,
            "reference_model": cls.uses_reference,
            "loss": cls.loss_kwargs(recipe),
            "prefopt_overrides": cls.overrides(recipe),
        }


RENAMED_TRAINING_ARGS = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}
"""transformers 5.x names (old → current); the old ones warn (FutureWarning) and go in v6."""


def _checkpointing(kwargs: dict[str, Any], enabled: bool, config_class: type) -> None:
    """Activation (gradient) checkpointing under the name this transformers uses: the recipe's
    ``model.gradient_checkpointing``, unless ``training:`` sets it under either name; a ``training:``
    key under the old name is passed under the current one."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(config_class)}
    for old, new in RENAMED_TRAINING_ARGS.items():
        if new in fields and old in kwargs and new not in kwargs:
            kwargs[new] = kwargs.pop(old)
    name = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    if "activation_checkpointing" not in kwargs and "gradient_checkpointing" not in kwargs:
        kwargs[name] = enabled


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


_REGISTRY: dict[str, type[Adapter]] = {}


def register(adapter: type[Adapter]) -> type[Adapter]:
    _REGISTRY[adapter.name] = adapter
    return adapter


def get_adapter(name: str) -> type[Adapter]:
    from prefopt.algorithms import dpo, ipo, kto, orpo, simpo  # noqa: F401 - registers (idempotent)

    if name not in _REGISTRY:
        raise PrefoptError(
            f'unknown algorithm "{name}".{did_you_mean(name, _REGISTRY)} Choose one of: {", ".join(_REGISTRY)}.',
            where="algorithm",
        )
    return _REGISTRY[name]


def algorithm_names() -> list[str]:
    get_adapter("dpo")
    return list(_REGISTRY)
