"""The adapter base class and the registry of adapters (see :mod:`prefopt.training.algorithms`).

Algorithm adapters: one small module per algorithm, each mapping a validated Recipe onto one TRL
trainer, and a registry.

An adapter translates and nothing else. What an algorithm *is* (data kind, reference, loss schema, TRL
classes) is its row in :mod:`prefopt.config.algorithms` (``spec``); the adapter adds the TRL side:
``trl_config`` builds the TRL config (loss parameters as TRL expects them), ``trainer_class`` names the
trainer (a :mod:`prefopt.training.trainers` subclass where TRL's behaviour differs from the paper),
``trainer_kwargs`` the subclass's own arguments, ``settle_on_data`` the settings an algorithm takes from
its training rows (KTO's weights). ``describe`` is what ``prefopt train --dry-run`` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from prefopt.config.algorithms import ALGORITHMS, AlgorithmSpec, get_spec
from prefopt.config.recipe import PREFOPT_TRAINING_KEYS


@dataclass(frozen=True)
class Adapter:
    """Base adapter. Subclasses set ``spec`` (their row of the table), ``trainer`` and ``reference_loss``
    and implement ``loss_kwargs``."""

    spec: ClassVar[AlgorithmSpec]
    trainer: ClassVar[type]  # the prefopt trainer subclass
    reference_loss: ClassVar[Callable[..., torch.Tensor]]  # the paper's formula in prefopt.training.losses

    # copied from the row when a subclass is defined
    name: ClassVar[str]
    data_kind: ClassVar[str]  # "paired" | "unpaired"
    uses_reference: ClassVar[bool]
    trl_trainer: ClassVar[str]  # dotted path of the TRL class the prefopt trainer derives from
    paper: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        spec = cls.spec
        cls.name, cls.data_kind, cls.uses_reference = spec.name, spec.data_kind, spec.uses_reference
        cls.trl_trainer, cls.paper = spec.trl_trainer, spec.paper

    @classmethod
    def config_class(cls) -> type:
        return cls.spec.config_class()

    @classmethod
    def trainer_class(cls, recipe) -> type:
        return cls.trainer

    # ---- what subclasses provide
    @classmethod
    def loss_kwargs(cls, recipe) -> dict[str, Any]:
        """The loss parameters exactly as the TRL config receives them."""
        raise NotImplementedError

    @classmethod
    def trainer_kwargs(cls, recipe) -> dict[str, Any]:
        """Keyword arguments of the prefopt trainer subclass beyond TRL's (none by default)."""
        return {}

    @classmethod
    def extra_columns(cls, recipe) -> tuple[str, ...]:
        """Canonical columns the trainer needs beside the token ids (a reward model's scores for its margin)."""
        return ()

    @classmethod
    def overrides(cls, recipe) -> list[str]:
        """Where prefopt departs from stock TRL for this recipe (shown by --dry-run and in the manifest)."""
        return [
            "tokenisation: prefopt pre-tokenises (prefopt.data.tokenization); TRL's own tokenisation is skipped"
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
        spec = cls.spec
        return {
            "algorithm": spec.name,
            "paper": spec.paper,
            "trainer": f"{trainer.__module__}.{trainer.__qualname__}",
            "trl_base_trainer": spec.trl_trainer,
            "config_class": f"{cls.config_class().__module__}.{cls.config_class().__qualname__}",
            "data_kind": spec.data_kind,
            "reference_model": spec.uses_reference,
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
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


_REGISTRY: dict[str, type[Adapter]] = {}


def register(adapter: type[Adapter]) -> type[Adapter]:
    _REGISTRY[adapter.spec.name] = adapter
    return adapter


def get_adapter(name: str) -> type[Adapter]:
    """The adapter of algorithm ``name`` (an unknown name is a PrefoptError naming the choices)."""
    spec = get_spec(name)
    return _REGISTRY[spec.name]


def algorithm_names() -> list[str]:
    return list(registered())


def registered() -> dict[str, type[Adapter]]:
    """Algorithm name → adapter, for every adapter registered so far, in the table's order (not the
    order the adapter modules happened to be imported in)."""
    return {name: _REGISTRY[name] for name in ALGORITHMS if name in _REGISTRY}
