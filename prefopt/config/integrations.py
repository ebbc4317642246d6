"""Third-party pieces a recipe asks for, settled when the recipe loads — before any data or model.

* ``training.report_to``: each tracker's package must be importable, else exit 2 with the install line
  (TRL would otherwise raise a RuntimeError traceback after the model loaded). ``pip install
  'prefopt[tracking]'`` installs tensorboard and trackio.
* bitsandbytes: imported only by a recipe that quantizes (``model.quantization``) or uses one of its
  optimizers. PEFT imports it eagerly (``peft/helpers.py``), which costs half a second and, on CPUs
  with AVX512-BF16, prints a kernel warning in every run. The CLI closes the gate first
  (:func:`defer_bitsandbytes`: ``import bitsandbytes`` then fails as if it were not installed, so PEFT
  and transformers treat it as absent); loading a recipe that needs it reopens it
  (:func:`allow_bitsandbytes`). Library use without the CLI is unaffected.
* data paths: a recipe read from a file gets its local data paths made absolute (against the recipe's
  folder, where they were read from), so the run's ``resolved.yaml`` names the files it trained on and
  ``prefopt eval --run DIR`` reads the same ones from any working directory.

Hooked into :func:`prefopt.config.recipe.load_recipe` as ``on_recipe_loaded(recipe, where)``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from prefopt.core.errors import PrefoptError, did_you_mean

TRACKING_EXTRA = "pip install 'prefopt[tracking]'"
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    # report_to name → (modules, any one of which makes it available; the install line)
    "tensorboard": (("tensorboard", "tensorboardX"), f"{TRACKING_EXTRA} (or pip install tensorboard)"),
    "trackio": (("trackio",), f"{TRACKING_EXTRA} (or pip install trackio)"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "comet_ml": (("comet_ml",), "pip install comet-ml"),
    "neptune": (("neptune",), "pip install neptune"),
    "clearml": (("clearml",), "pip install clearml"),
    "codecarbon": (("codecarbon",), "pip install codecarbon"),
    "dvclive": (("dvclive",), "pip install dvclive"),
    "swanlab": (("swanlab",), "pip install swanlab"),
    "azure_ml": (("azureml.core",), "pip install azureml-core"),
    "flyte": (("flytekit",), "pip install flytekit flytekitplugins-deck-standard"),
    "dagshub": (("dagshub",), "pip install dagshub mlflow"),
    "kubeflow": ((), ""),  # no package: transformers reads KUBEFLOW_TRAINER_SERVER_URL
}
BNB = "bitsandbytes"


# ------------------------------------------------------------------------------------------- report_to
def _available(module: str) -> bool:
    top = module.split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def report_to_names(value: Any) -> list[str]:
    """``training.report_to`` as a list of tracker names (``none``/``all``/unset → empty)."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else list(value)
    return [str(n) for n in names if str(n) not in ("none", "all")]


def check_report_to(training: dict[str, Any], where: str) -> None:
    """Exit-2 error naming the tracker and its install line when ``report_to`` asks for one that is
    not installed (or not known to transformers)."""
    for name in report_to_names(training.get("report_to")):
        if name not in TRACKERS:
            raise PrefoptError(
                f'"training.report_to" = {name!r} is not an integration transformers knows.'
                f"{did_you_mean(name, TRACKERS)} Known: {', '.join(TRACKERS)}.",
                where=where,
                fix="use one of those names, a list of them, or none.",
            )
        modules, install = TRACKERS[name]
        if modules and not any(_available(m) for m in modules):
            raise PrefoptError(
                f'"training.report_to" includes {name}, but the {modules[0]} package is not installed, '
                "so the trainer could not log to it.",
                where=where,
                fix=f"{install}; or remove {name} from training.report_to.",
            )


# ------------------------------------------------------------------------------------------- bitsandbytes
def needs_bitsandbytes(recipe: Any) -> bool:
    """Whether the recipe quantizes the model or trains with a bitsandbytes optimizer."""
    if getattr(recipe.model, "quantization", None) is not None:
        return True
    optim = str(recipe.training.get("optim") or "")
    return "bnb" in optim or "8bit" in optim or optim.startswith("paged_") or optim == "lion_32bit"


def defer_bitsandbytes() -> bool:
    """Make ``import bitsandbytes`` fail as if it were not installed, until :func:`allow_bitsandbytes`.
    Does nothing once it was imported. Returns whether the gate is closed."""
    if BNB in sys.modules and sys.modules[BNB] is not None:
        return False
    sys.modules[BNB] = None  # type: ignore[assignment]  # the import system's "not importable" mark
    return True


def bitsandbytes_deferred() -> bool:
    return BNB in sys.modules and sys.modules[BNB] is None


def allow_bitsandbytes() -> None:
    """Reopen the gate and forget what libraries cached while it was closed."""
    if not bitsandbytes_deferred():
        return
    del sys.modules[BNB]
    checks = (
        ("transformers.utils.import_utils", "is_bitsandbytes_available"),
        ("peft.import_utils", "is_bnb_available"),
        ("peft.import_utils", "is_bnb_4bit_available"),
    )
    for module, name in checks:
        fn = getattr(sys.modules.get(module), name, None)
        clear = getattr(fn, "cache_clear", None)
        if clear is not None:
            clear()
    helpers = sys.modules.get("peft.helpers")  # `try: import bitsandbytes as bnb` ran while closed
    if helpers is not None and getattr(helpers, "bnb", None) is None:
        helpers.bnb = _LazyModule(BNB)


class _LazyModule:
    """Stands in for a module imported on first attribute access (no import cost until used)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


# ------------------------------------------------------------------------------------------- data paths
def absolute_data_paths(recipe: Any) -> None:
    """Local data paths of a recipe read from a file → absolute (relative ones against its folder).
    Hub ids and paths that do not exist are left as written (reading them reports the problem)."""
    if recipe.source_path is None:
        return
    base = recipe.source_path.parent
    for src in list(recipe.data.train) + list(recipe.data.eval or []):
        if not src.path:
            continue
        p = Path(src.path).expanduser()
        candidate = p if p.is_absolute() else base / p
        if candidate.exists():
            src.path = str(candidate.resolve())


def on_recipe_loaded(recipe: Any, where: str) -> None:
    """What :func:`prefopt.config.recipe.load_recipe` runs on every validated recipe (see the module doc)."""
    check_report_to(recipe.training, where)
    if needs_bitsandbytes(recipe):
        allow_bitsandbytes()
    absolute_data_paths(recipe)
