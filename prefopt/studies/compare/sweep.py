"""The sweep file: its schema (:class:`Sweep`, :class:`GridEntry`), and the grid expanded into validated
recipes, one :class:`Point` each — everything checked before anything trains."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from prefopt.config.algorithms import ALGORITHMS, PARAM_SYMBOLS, AlgorithmName, algorithm_names, get_spec
from prefopt.config.recipe import load_recipe, read_yaml
from prefopt.config.schema import StrictModel, validate
from prefopt.core.errors import PrefoptError
from prefopt.studies.measure import CompareEvaluation

STUDIES = ("rlhf", "iterative_dpo")
"""What a sweep runs beside its grid (their rows' ``algorithm``)."""
MAIN_PARAM = {name: spec.scale_param for name, spec in ALGORITHMS.items()}
"""Algorithm → the parameter a point is labelled and sorted by (TRL's ``beta``: β, τ or λ)."""
SYMBOLS = {**PARAM_SYMBOLS, "learning_rate": "lr", "round": "round"}
CHOICES = {"algorithm": algorithm_names()}


class GridEntry(StrictModel):
    """One algorithm of the grid. List values under ``loss``/``training`` are swept (product)."""

    algorithm: AlgorithmName
    base: str | None = Field(
        None, description="Base recipe (relative to the sweep file); default: the sweep's `base`."
    )
    loss: dict[str, Any] = Field(default_factory=dict, description="Loss parameters; lists are swept.")
    training: dict[str, Any] = Field(default_factory=dict, description="TRL config fields; lists are swept.")
    online: dict[str, Any] = Field(
        default_factory=dict,
        description="Online algorithms: fields of the base's online block (k, temperature, length_penalty, "
        "kl_budget, ...); lists are swept.",
    )
    overrides: list[str] = Field(default_factory=list, description="Extra `section.key=value` overrides.")

    @model_validator(mode="after")
    def _trains_a_policy(self):
        if get_spec(self.algorithm).trains != "policy":  # a reward model has no policy to compare
            raise ValueError(
                f"algorithm {self.algorithm} trains a reward model, not a policy, so it has no point on the "
                "frontier: train it with `prefopt train`, or use the sweep's rlhf section"
            )
        return self


class Sweep(StrictModel):
    base: str | None = Field(None, description="Default base recipe, relative to the sweep file.")
    grid: list[GridEntry] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    overrides: list[str] = Field(
        default_factory=list, description="`section.key=value` for every grid point."
    )
    rlhf: dict[str, Any] | list[dict[str, Any]] | None = Field(
        None,
        description="RLHF baseline (prefopt.studies.rlhf.RLHFSection), a list of them (e.g. plain and "
        "defended RLHF side by side), or null.",
    )
    iterative_dpo: dict[str, Any] | None = Field(
        None, description="Iterative DPO (prefopt.studies.iterative) or null."
    )
    evaluation: CompareEvaluation = Field(default_factory=CompareEvaluation)
    reuse_tokenized: bool = Field(
        True, description="Tokenise once per (data, kind, seed, tokenizer, lengths)."
    )
    reference_cache: bool = Field(
        True, description="Set reference_cache.enabled on points that use a reference."
    )
    save_models: bool = Field(False, description="Save each point's model under its run dir.")
    threads: int | None = Field(
        1,
        gt=0,
        description=(
            "torch intra-op threads while the sweep runs (null: torch's default). 1 is fastest for the tiny world "
            "model and does not collapse when other processes share the cores."
        ),
    )
    output: str = Field("runs/compare-{timestamp}", description="Output dir (relative to the working dir).")

    _source_path: Path | None = None

    @model_validator(mode="after")
    def _something_to_run(self):
        if not self.grid and self.rlhf is None and self.iterative_dpo is None:
            raise ValueError("the sweep runs nothing: give a grid, rlhf or iterative_dpo")
        return self

    def resolve(self, p: str | None) -> Path | None:
        if p is None:
            return None
        path = Path(p).expanduser()
        if not path.is_absolute() and self._source_path is not None:
            path = self._source_path.parent / path
        return path.resolve()


def load_sweep(path: str | Path | None = None, *, data: dict | None = None) -> Sweep:
    """Read and validate a sweep file (or a dict, with paths relative to the working dir)."""

    where = str(path) if path is not None else "<sweep>"
    raw = read_yaml(path) if path is not None else copy.deepcopy(data or {})
    sweep = validate(Sweep, raw, where, choices=CHOICES)
    sweep._source_path = Path(path).resolve() if path is not None else None
    return sweep


class Point:
    """One grid point: a validated recipe and what makes it different from its neighbours."""

    def __init__(self, name: str, algorithm: str, recipe, params: dict[str, Any], seed: int):
        self.name, self.algorithm, self.recipe, self.params, self.seed = name, algorithm, recipe, params, seed

    @property
    def main_param(self) -> tuple[str, float] | None:
        key = MAIN_PARAM.get(self.algorithm)
        if key is None:
            return None
        value = self.params.get(key, self.recipe.loss_params.model_dump().get(key))
        return key, value


def fmt_param(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _product(section: dict[str, Any]) -> list[dict[str, Any]]:
    keys = [k for k, v in section.items() if isinstance(v, list)]
    fixed = {k: v for k, v in section.items() if not isinstance(v, list)}
    if not keys:
        return [dict(fixed)]
    out = []
    for combo in itertools.product(*(section[k] for k in keys)):
        out.append({**fixed, **dict(zip(keys, combo))})
    return out


def _swept(section: dict[str, Any]) -> set[str]:
    return {k for k, v in section.items() if isinstance(v, list)}


def expand_grid(sweep: Sweep, where: str = "<sweep>") -> list[Point]:
    """Every grid point as a validated recipe (fails before anything trains)."""

    points: list[Point] = []
    seen: set[str] = set()
    for i, entry in enumerate(sweep.grid):
        base_path = sweep.resolve(entry.base or sweep.base)
        if base_path is None:
            raise PrefoptError(
                f"grid[{i}] ({entry.algorithm}) has no base recipe and the sweep has no `base`.",
                where=where,
                fix="add `base: path/to/recipe.yaml` to the entry or the sweep.",
            )
        if not base_path.exists():
            raise PrefoptError(
                f"grid[{i}]: base recipe {base_path} does not exist.",
                where=where,
                fix="base paths are relative to the sweep file.",
            )
        raw = read_yaml(base_path)
        base_algorithm = raw.get("algorithm")
        swept = _swept(entry.loss) | _swept(entry.training) | _swept(entry.online)
        combos = itertools.product(_product(entry.loss), _product(entry.training), _product(entry.online))
        for loss, training, online in combos:
            for seed in sweep.seeds:
                data = copy.deepcopy(raw)
                data["algorithm"] = entry.algorithm
                if base_algorithm != entry.algorithm:
                    # the base's loss belongs to another algorithm; only the entry's parameters apply
                    data["loss"] = {}
                    base_kind = get_spec(base_algorithm).data_kind if base_algorithm else None
                    kind = get_spec(entry.algorithm).data_kind
                    d = data.setdefault("data", {})
                    if base_kind and base_kind != kind and d.get("transform", "none") == "none":
                        d["transform"] = "unpair" if kind == "unpaired" else "pair"
                data["loss"] = {**(data.get("loss") or {}), **loss}
                data["training"] = {**(data.get("training") or {}), **training}
                if online:  # an offline algorithm given online fields is refused by the recipe's check
                    data["online"] = {**(data.get("online") or {}), **online}
                data["seed"] = seed
                spec = get_spec(entry.algorithm)
                # the reference cache stores log-probs of fixed data: an online point's pairs are new each step
                if sweep.reference_cache and spec.uses_reference and not spec.samples_online:
                    data["reference_cache"] = {**(data.get("reference_cache") or {}), "enabled": True}
                data["output"] = {
                    **(data.get("output") or {}),
                    "save_model": sweep.save_models,
                    "overwrite": True,
                }
                params = {k: v for k, v in {**loss, **training, **online}.items() if k in swept}
                label = "-".join(f"{k}{fmt_param(v)}" for k, v in params.items())
                name = f"{entry.algorithm}{'-' + label if label else ''}-seed{seed}"
                if name in seen:
                    name = f"{name}-g{i}"
                seen.add(name)
                try:
                    recipe = load_recipe(data=data, overrides=[*sweep.overrides, *entry.overrides])
                except PrefoptError as err:
                    raise PrefoptError(
                        f"grid[{i}] point {name} (base {base_path.name}): {err}", where=where
                    ) from None
                recipe._source_path = base_path
                params.setdefault(
                    MAIN_PARAM[entry.algorithm], recipe.loss_params.model_dump()[MAIN_PARAM[entry.algorithm]]
                )
                points.append(Point(name, entry.algorithm, recipe, params, seed))
    return points
