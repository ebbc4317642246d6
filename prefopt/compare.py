"""``prefopt compare``: a measured algorithm comparison on the ground-truth world.

One sweep file runs a grid — algorithms × loss parameters (β, τ, λ, ...) × seeds — from base recipes,
optionally adds an RLHF baseline (Bradley-Terry reward model + RLOO, :mod:`prefopt.rlhf`) and
iterative (online) DPO (:mod:`prefopt.iterative`), and measures every point the same way:

* **true reward** of the trained policy on the world's held-out prompts, sampled (T = 1) and greedy
  (:func:`prefopt.world.evaluate_policy`);
* **KL(π ‖ π_ref)** to the world reference, estimated on the policy's own samples (nats/sequence);
* **held-out preference accuracy**: on pairs drawn from the world's *test* prompts
  (``preference_rows(task, n, split="test")``), the fraction whose chosen reply has the higher
  implicit reward log π(y|x) − log π_ref(y|x) (summed log-probs, :func:`prefopt.world.sequence_logps`).
  The same β-free definition for every algorithm (also ORPO/SimPO/RLHF, which train without the
  reference), so the column compares policies, not loss scales; ``logp_accuracy`` is the ranking by
  log π alone;
* **wall time** (and process CPU time, which does not depend on how busy a shared machine is) and
  **peak memory** (resident set size sampled every 50 ms while the point runs; the CUDA peak too on
  a GPU).

Outputs, under the sweep's ``output`` directory: one run directory per point (``resolved.yaml``,
``metrics.jsonl``, ``point.json``, ``model/`` when ``save_models``), ``compare.json`` (everything),
``compare.md`` (the table, sorted by algorithm and parameter) and ``frontier.png`` (true reward vs KL,
one marker per algorithm, parameters annotated).

Sweep file (``configs/sweeps/world.yaml``)::

    base: ../recipes/quickstart/dpo.yaml         # default base recipe (relative to this file)
    grid:
      - {algorithm: dpo, base: ../recipes/quickstart/dpo.yaml, loss: {beta: [0.05, 0.1, 0.3]}}
      - {algorithm: ipo, base: ../recipes/quickstart/ipo.yaml, loss: {tau: [0.1, 0.25, 0.5]}}
    seeds: [0]
    rlhf: {...}               # prefopt.rlhf.RLHFSection, or null
    iterative_dpo: {rounds: 3, ...}   # prefopt.iterative.IterativeDPOSection, or null
    output: runs/compare-world

List values under ``loss:`` / ``training:`` of a grid entry are swept (their product); scalars are
set on every point of the entry. Tokenised data is reused: points whose data section, data kind,
seed, tokenizer and length limits agree tokenise once (``reuse_tokenized``). Each point's recipe gets
``reference_cache.enabled: true`` (algorithms with a reference), so the reference log-prob cache
is used wherever the training code honours it.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import itertools
import json
import logging
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prefopt.errors import PrefoptError, did_you_mean

log = logging.getLogger("prefopt")

ALGORITHM_ORDER = ("reference", "dpo", "ipo", "kto", "orpo", "simpo", "rlhf", "iterative_dpo")
MAIN_PARAM = {"dpo": "beta", "ipo": "tau", "kto": "beta", "orpo": "lam", "simpo": "beta"}
SYMBOLS = {
    "beta": "β",
    "tau": "τ",
    "lam": "λ",
    "gamma_beta_ratio": "γ/β",
    "label_smoothing": "ε",
    "desirable_weight": "λ_D",
    "undesirable_weight": "λ_U",
    "learning_rate": "lr",
    "round": "round",
}


# --------------------------------------------------------------------------------------------- schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GridEntry(_Strict):
    """One algorithm of the grid. List values under ``loss``/``training`` are swept (product)."""

    algorithm: Literal["dpo", "ipo", "kto", "orpo", "simpo"]
    base: str | None = Field(
        None, description="Base recipe (relative to the sweep file); default: the sweep's `base`."
    )
    loss: dict[str, Any] = Field(default_factory=dict, description="Loss parameters; lists are swept.")
    training: dict[str, Any] = Field(default_factory=dict, description="TRL config fields; lists are swept.")
    overrides: list[str] = Field(default_factory=list, description="Extra `section.key=value` overrides.")


class CompareEvaluation(_Strict):
    """How every point (and the reference) is measured; the same for all of them."""

    num_prompts: int = Field(300, gt=0, description="Held-out prompts for the true reward and KL.")
    samples_per_prompt: int = Field(4, gt=0, description="Sampled completions per prompt (T = 1).")
    max_new_tokens: int = Field(8, gt=0)
    seed: int = Field(1234, description="Sampling seed (the same for every point).")
    pref_prompts: int = Field(
        300,
        ge=0,
        description="Held-out prompts the preference pairs are drawn from "
        "(world test split, up to 2 pairs each); 0 = skip.",
    )


class Sweep(_Strict):
    base: str | None = Field(None, description="Default base recipe, relative to the sweep file.")
    grid: list[GridEntry] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    overrides: list[str] = Field(
        default_factory=list, description="`section.key=value` for every grid point."
    )
    rlhf: dict[str, Any] | None = Field(None, description="RLHF baseline (prefopt.rlhf.RLHFSection) or null.")
    iterative_dpo: dict[str, Any] | None = Field(
        None, description="Iterative DPO (prefopt.iterative) or null."
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


def _explain(err: ValidationError, where: str, model: type[BaseModel]) -> PrefoptError:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            parent: Any = model
            for part in loc[:-1]:
                if part.isdigit() or parent is None:
                    continue
                field = parent.model_fields.get(part)
                ann = field.annotation if field else None
                parent = next((a for a in _models_in(ann)), None)
            options = list(parent.model_fields) if parent is not None else []
            lines.append(
                f'unknown key "{key}".{did_you_mean(loc[-1], options)}'
                + (f" Allowed here: {', '.join(options)}." if options else "")
            )
        elif e["type"] == "missing":
            lines.append(f'missing required key "{key}".')
        else:
            lines.append(f'"{key}" = {e.get("input")!r}: {e["msg"].removeprefix("Value error, ")}.')
    return PrefoptError(" ".join(lines), where=where)


def _models_in(ann) -> Iterator[type[BaseModel]]:
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        yield ann
        return
    for arg in typing.get_args(ann):
        yield from _models_in(arg)


def load_sweep(path: str | Path | None = None, *, data: dict | None = None) -> Sweep:
    """Read and validate a sweep file (or a dict, with paths relative to the working dir)."""
    from prefopt.recipe import read_yaml

    where = str(path) if path is not None else "<sweep>"
    raw = read_yaml(path) if path is not None else copy.deepcopy(data or {})
    try:
        sweep = Sweep(**raw)
    except ValidationError as err:
        raise _explain(err, where, Sweep) from None
    sweep._source_path = Path(path).resolve() if path is not None else None
    return sweep


# --------------------------------------------------------------------------------------------- points
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


def _fmt(v: Any) -> str:
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
    from prefopt.algorithms import get_adapter
    from prefopt.recipe import load_recipe, read_yaml

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
        swept = _swept(entry.loss) | _swept(entry.training)
        for loss, training in itertools.product(_product(entry.loss), _product(entry.training)):
            for seed in sweep.seeds:
                data = copy.deepcopy(raw)
                data["algorithm"] = entry.algorithm
                if base_algorithm != entry.algorithm:
                    # the base's loss belongs to another algorithm; only the entry's parameters apply
                    data["loss"] = {}
                    base_kind = get_adapter(base_algorithm).data_kind if base_algorithm else None
                    kind = get_adapter(entry.algorithm).data_kind
                    d = data.setdefault("data", {})
                    if base_kind and base_kind != kind and d.get("transform", "none") == "none":
                        d["transform"] = "unpair" if kind == "unpaired" else "pair"
                data["loss"] = {**(data.get("loss") or {}), **loss}
                data["training"] = {**(data.get("training") or {}), **training}
                data["seed"] = seed
                if sweep.reference_cache and get_adapter(entry.algorithm).uses_reference:
                    data["reference_cache"] = {**(data.get("reference_cache") or {}), "enabled": True}
                data["output"] = {
                    **(data.get("output") or {}),
                    "save_model": sweep.save_models,
                    "overwrite": True,
                }
                params = {k: v for k, v in {**loss, **training}.items() if k in swept}
                label = "-".join(f"{k}{_fmt(v)}" for k, v in params.items())
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


def world_task(recipe) -> str:
    from prefopt.train import world_task_of

    task = world_task_of(recipe)
    if task is None:
        raise PrefoptError(
            "prefopt compare measures the true reward of the ground-truth world, but this recipe's data does "
            "not come from it.",
            where=str(recipe.source_path or "<recipe>"),
            fix="use a base recipe with `data: {train: [{source: world, task: arith, ...}]}` "
            "(configs/recipes/quickstart/*.yaml).",
        )
    return task


# --------------------------------------------------------------------------------------------- measuring
class Measure:
    """Wall time, process CPU time and peak memory of a block.

    Peak RSS is sampled every ``interval`` seconds by a thread (psutil, else /proc), so a peak shorter
    than that can be missed; ``ru_maxrss`` cannot be used per point because it only grows over the
    process's life. On a GPU the CUDA allocator's peak is reset and read too."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.result: dict[str, float] = {}

    @staticmethod
    def rss_bytes() -> int:
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except ImportError:  # pragma: no cover - psutil ships with the test environment
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        import torch

        self._stop = threading.Event()
        self._start_rss = self._peak = self.rss_bytes()
        self._t0 = time.perf_counter()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu0 = ru.ru_utime + ru.ru_stime
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self.rss_bytes())

    def __exit__(self, *exc):
        import torch

        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.rss_bytes())
        ru = resource.getrusage(resource.RUSAGE_SELF)
        mb = 1024 * 1024
        self.result = {
            "wall_s": round(time.perf_counter() - self._t0, 2),
            "cpu_s": round(ru.ru_utime + ru.ru_stime - self._cpu0, 2),
            "peak_rss_mb": round(self._peak / mb, 1),
            "peak_rss_delta_mb": round((self._peak - self._start_rss) / mb, 1),
        }
        if torch.cuda.is_available():
            self.result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / mb, 1)
        return False


class WorldEvaluator:
    """The one measurement applied to every point (and to the reference), with the reference model and
    its log-probs on the held-out pairs computed once."""

    def __init__(self, task: str, reference, tokenizer, settings: CompareEvaluation | None = None):
        from prefopt import world

        self.task, self.reference, self.tokenizer = task, reference, tokenizer
        self.settings = settings or CompareEvaluation()
        s = self.settings
        self.pairs = (
            world.preference_rows(task, s.pref_prompts, split="test", seed=s.seed) if s.pref_prompts else []
        )
        self._ref_lp = self._logps(reference) if self.pairs else None
        self.reference_result = self._sampling(reference, with_kl=False)
        self.reference_result["kl_to_reference"] = 0.0
        if self._ref_lp is not None:
            lc, lr = self._ref_lp
            self.reference_result["logp_accuracy"] = float((lc > lr).double().mean())
            self.reference_result["pref_accuracy"] = None  # log π/π_ref is 0 for the reference itself

    @classmethod
    def for_task(cls, task: str, settings: CompareEvaluation | None = None) -> WorldEvaluator:
        from prefopt import world
        from prefopt.models import load_trained

        ref, tok = load_trained(world.reference_checkpoint(task))
        return cls(task, ref.eval(), tok, settings)

    def _logps(self, model):
        from prefopt import world

        prompts = [r["prompt"] for r in self.pairs]
        lc = world.sequence_logps(model, self.tokenizer, prompts, [r["chosen"] for r in self.pairs])
        lr = world.sequence_logps(model, self.tokenizer, prompts, [r["rejected"] for r in self.pairs])
        return lc, lr

    def _sampling(self, model, *, with_kl: bool) -> dict:
        from prefopt import world

        s = self.settings
        return world.evaluate_policy(
            model,
            self.tokenizer,
            self.task,
            reference=self.reference if with_kl else None,
            num_prompts=s.num_prompts,
            samples_per_prompt=s.samples_per_prompt,
            seed=s.seed,
            max_new_tokens=s.max_new_tokens,
        )

    def __call__(self, model) -> dict:
        import torch

        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = self._sampling(model, with_kl=True)
            if self._ref_lp is not None:
                lc, lr = self._logps(model)
                rc, rr = self._ref_lp
                out["pref_accuracy"] = float(((lc - rc) > (lr - rr)).double().mean())
                out["logp_accuracy"] = float((lc > lr).double().mean())
                out["pref_pairs"] = len(self.pairs)
        if was_training:
            model.train()
        out["eval_s"] = round(time.perf_counter() - t0, 2)
        return out


# --------------------------------------------------------------------------------------------- running
class TokenizedCache:
    """Tokenised datasets shared by points that would tokenise identically."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._store: dict[str, tuple] = {}
        self.hits = 0

    @staticmethod
    def key(recipe) -> str:
        from prefopt.algorithms import get_adapter

        k = {
            "data": recipe.data.model_dump(mode="json"),
            "kind": get_adapter(recipe.algorithm).data_kind,
            "seed": recipe.seed,
            "tokenizer": recipe.model.tokenizer or recipe.model.name,
            "chat_template": recipe.model.chat_template,
            "max_length": recipe.training.get("max_length"),
            "max_prompt_length": recipe.training.get("max_prompt_length"),
            "source": str(recipe.source_path.parent) if recipe.source_path else None,
        }
        return hashlib.sha256(json.dumps(k, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def get(self, recipe, tokenizer):
        from prefopt.train import prepare_data

        if not self.enabled:
            return prepare_data(recipe, tokenizer)
        key = self.key(recipe)
        if key in self._store:
            self.hits += 1
            return self._store[key]
        self._store[key] = prepare_data(recipe, tokenizer)
        return self._store[key]


def run_point(point: Point, run_dir: Path, evaluate: Callable, data_cache: TokenizedCache) -> dict:
    """Train one grid point (the pipeline of :func:`prefopt.train.train`, on cached tokenised data) and
    measure it."""
    from prefopt import manifest
    from prefopt.algorithms import get_adapter
    from prefopt.callbacks import MetricsJsonlCallback
    from prefopt.models import load_model
    from prefopt.recipe import dump_resolved
    from prefopt.resilience import NonFiniteGuard
    from prefopt.train import build_trainer, resolve_batch, save_model, settle_on_data

    recipe = point.recipe
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved.yaml").write_text(dump_resolved(recipe))
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    adapter = get_adapter(recipe.algorithm)
    with Measure() as m:
        training = resolve_batch(recipe)
        training.setdefault("save_strategy", "no")  # a sweep point is short: no intermediate checkpoints
        model, tokenizer = load_model(recipe.model, seed=recipe.seed)
        train_tok, eval_tok, train_ds, _eval_ds, report = data_cache.get(recipe, tokenizer)
        report.save(run_dir / "data_report.json")
        recipe, data_settings = settle_on_data(recipe, train_ds)
        config = adapter.trl_config(recipe, output_dir=str(run_dir / "checkpoints"), training=training)
        guard = NonFiniteGuard()
        trainer = build_trainer(
            recipe,
            model,
            tokenizer,
            train_tok,
            eval_tok,
            output_dir=str(run_dir / "checkpoints"),
            callbacks=[MetricsJsonlCallback(run_dir / "metrics.jsonl"), guard],
            config=config,
        )
        t0 = time.perf_counter()
        result = trainer.train()
        train_s = time.perf_counter() - t0
        if recipe.output.save_model:
            save_model(trainer, tokenizer, run_dir / "model")
        policy = trainer.accelerator.unwrap_model(trainer.model)
        evaluation = evaluate(policy)
    out = {
        "name": point.name,
        "algorithm": point.algorithm,
        "params": point.params,
        "seed": point.seed,
        "status": "failed" if guard.tripped else "finished",
        "error": f"non-finite {guard.tripped[1]} at step {guard.tripped[0]}" if guard.tripped else None,
        "run_dir": str(run_dir),
        "trainer": adapter.describe(recipe)["trainer"],
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "train_rows": len(train_tok),
        "data_settings": data_settings,
        "train_s": round(train_s, 2),
        **m.result,
        "eval": evaluation,
    }
    manifest.write_json(run_dir / "point.json", out)
    del trainer, model, policy
    gc.collect()
    return out


def _finished(run_dir: Path, fingerprint: str) -> dict | None:
    try:
        prev = json.loads((run_dir / "point.json").read_text())
    except (OSError, ValueError):
        return None
    if prev.get("status") == "finished" and prev.get("fingerprint") == fingerprint:
        return prev
    return None


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def world_identity(task: str) -> dict:
    """What a finished point's numbers depend on besides its recipe: the world reference (its directory
    name is keyed by the warm start), the world's data version and the library versions."""
    from prefopt import manifest, world

    return {
        "reference": world.reference_checkpoint(task).name,
        "world_version": world.WORLD_VERSION,
        "data_version": getattr(world, "DATA_VERSION", None),
        "versions": {
            k: v for k, v in manifest.versions().items() if k in ("torch", "transformers", "trl", "peft")
        },
    }


class Plan:
    """What a sweep will run: validated grid points, the rlhf / iterative DPO sections and their base
    recipes, and the world task (one per sweep)."""

    def __init__(self, points, rlhf, iterative_dpo, side_bases, task):
        self.points, self.rlhf, self.iterative_dpo, self.side_bases, self.task = (
            points,
            rlhf,
            iterative_dpo,
            side_bases,
            task,
        )


def plan_sweep(sweep: Sweep, only: list[str] | None = None) -> Plan:
    """Validate everything a sweep will run — before anything trains."""
    from prefopt.recipe import load_recipe

    where = str(sweep._source_path or "<sweep>")
    points = expand_grid(sweep, where)
    if only:
        unknown = set(only) - {p.algorithm for p in points} - {"rlhf", "iterative_dpo"}
        if unknown:
            raise PrefoptError(f"--only {sorted(unknown)[0]}: not in this sweep.", where=where)
    default_base = _default_base(sweep, points)
    if only:
        points = [p for p in points if p.algorithm in only]
    sections: dict[str, Any] = {"rlhf": None, "iterative_dpo": None}
    side_bases = {}
    for key in sections:
        raw = getattr(sweep, key)
        if raw is None or (only and key not in only):
            continue
        if key == "rlhf":
            from prefopt.rlhf import RLHFSection as cls
        else:
            from prefopt.iterative import IterativeDPOSection as cls
        section = _validate_section(cls, raw, f"{where}: {key}")
        path = sweep.resolve(section.base) if section.base else default_base
        if path is None:
            raise PrefoptError(
                f"{key} has no base recipe.",
                where=where,
                fix=f"set {key}.base (a DPO world recipe) or the sweep's `base`.",
            )
        sections[key] = section
        side_bases[key] = load_recipe(path, [*sweep.overrides])
    tasks = {world_task(p.recipe) for p in points} | {world_task(r) for r in side_bases.values()}
    if len(tasks) != 1:
        raise PrefoptError(
            f"the sweep mixes world tasks {sorted(tasks)}; compare one task per sweep.", where=where
        )
    return Plan(points, sections["rlhf"], sections["iterative_dpo"], side_bases, tasks.pop())


def run_sweep(
    sweep: Sweep, *, output_dir: str | Path | None = None, rerun: bool = False, only: list[str] | None = None
) -> dict:
    """Run every point of a sweep and write compare.json, compare.md and frontier.png.

    Points whose run directory already holds a finished result for the same recipe and evaluation
    settings are reused (a re-run continues an interrupted sweep); ``rerun`` runs them again.
    ``only`` restricts the run to some of: the grid's algorithms, ``rlhf``, ``iterative_dpo``."""
    from prefopt.world import torch_threads

    plan = plan_sweep(sweep, only)
    with torch_threads(sweep.threads):
        return _run_plan(sweep, plan, output_dir=output_dir, rerun=rerun)


def _run_plan(sweep: Sweep, plan: Plan, *, output_dir, rerun: bool) -> dict:
    import torch

    from prefopt import manifest, world
    from prefopt.models import load_trained
    from prefopt.recipe import dump_resolved

    points, task = plan.points, plan.task
    run_rlhf, run_iter = plan.rlhf is not None, plan.iterative_dpo is not None
    rlhf_section, iter_section, side_bases = plan.rlhf, plan.iterative_dpo, plan.side_bases
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(output_dir) if output_dir else Path(sweep.output.format(timestamp=stamp)).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.resolved.json").write_text(json.dumps(sweep.model_dump(mode="json"), indent=2))
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    log.info(
        "compare: %d grid point(s)%s%s → %s",
        len(points),
        " + rlhf" if run_rlhf else "",
        " + iterative DPO" if run_iter else "",
        out_dir,
    )

    ref, tok = load_trained(world.reference_checkpoint(task))
    ref.eval()
    evaluator = WorldEvaluator(task, ref, tok, sweep.evaluation)
    eval_fp = {**sweep.evaluation.model_dump(), "world": world_identity(task)}
    data_cache = TokenizedCache(sweep.reuse_tokenized)
    results: list[dict] = []
    for i, point in enumerate(points, 1):
        run_dir = out_dir / "points" / point.name
        fp = _fingerprint({"recipe": dump_resolved(point.recipe), "eval": eval_fp, "task": task})
        prev = None if rerun else _finished(run_dir, fp)
        if prev is not None:
            log.info("compare [%d/%d] %s: finished earlier, reused", i, len(points), point.name)
            results.append(prev)
            continue
        log.info("compare [%d/%d] %s", i, len(points), point.name)
        try:
            res = run_point(point, run_dir, evaluator, data_cache)
        except PrefoptError:
            raise
        except Exception as exc:  # noqa: BLE001 - one failed point must not lose the others
            log.exception("compare: point %s failed", point.name)
            res = {
                "name": point.name,
                "algorithm": point.algorithm,
                "params": point.params,
                "seed": point.seed,
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "run_dir": str(run_dir),
            }
        res["fingerprint"] = fp
        run_dir.mkdir(parents=True, exist_ok=True)
        manifest.write_json(run_dir / "point.json", res)
        results.append(res)
        _log_point(res)

    if run_rlhf:
        from prefopt.rlhf import run_rlhf as _run_rlhf

        for seed in sweep.seeds:
            results.extend(
                _side_run(
                    "rlhf",
                    seed,
                    lambda d, s: _run_rlhf(
                        rlhf_section,
                        side_bases["rlhf"],
                        output_dir=d,
                        seed=s,
                        evaluate=evaluator,
                        data_cache=data_cache,
                    ),
                    out_dir,
                    rerun,
                    eval_fp,
                    rlhf_section,
                    side_bases["rlhf"],
                )
            )
    if run_iter:
        from prefopt.iterative import run_iterative_dpo

        for seed in sweep.seeds:
            results.extend(
                _side_run(
                    "iterative_dpo",
                    seed,
                    lambda d, s: run_iterative_dpo(
                        iter_section, side_bases["iterative_dpo"], output_dir=d, seed=s, evaluate=evaluator
                    ),
                    out_dir,
                    rerun,
                    eval_fp,
                    iter_section,
                    side_bases["iterative_dpo"],
                )
            )

    summary = {
        "task": task,
        "sweep": str(sweep._source_path) if sweep._source_path else None,
        "output_dir": str(out_dir),
        "evaluation": sweep.evaluation.model_dump(),
        "reference": {
            "name": "reference",
            "algorithm": "reference",
            "params": {},
            "seed": None,
            "status": "finished",
            "eval": evaluator.reference_result,
        },
        "points": results,
        "tokenized_cache_hits": data_cache.hits,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "hardware": manifest.hardware(),
        "versions": manifest.versions(),
        "git_commit": manifest.git_commit(),
        "torch_threads": torch.get_num_threads(),
    }
    summary["points_wall_s"], summary["points_cpu_s"] = _totals(results)
    summary["iterative_vs_offline_dpo"] = iterative_vs_offline(results)
    manifest.write_json(out_dir / "compare.json", summary)
    (out_dir / "compare.md").write_text(format_markdown(summary))
    plot_frontier(summary, out_dir / "frontier.png")
    return summary


def _totals(results: list[dict]) -> tuple[float, float]:
    """Wall and CPU seconds of all points, reused ones included (iterative DPO: its cumulative total; the
    RLHF reward model once)."""
    wall = cpu = 0.0
    rm_seen = set()
    for r in results:
        if r.get("algorithm") == "iterative_dpo":
            if r.get("final"):
                wall += r.get("cumulative_wall_s") or 0.0
                cpu += r.get("cumulative_cpu_s") or 0.0
            continue
        wall += r.get("wall_s") or 0.0
        cpu += r.get("cpu_s") or 0.0
        rm = r.get("reward_model")
        if rm:  # every RLHF row carries the shared reward model's cost; count it once
            if r["run_dir"] in rm_seen or str(Path(r["run_dir"]).parent) in rm_seen:
                wall -= rm.get("wall_s") or 0.0
                cpu -= rm.get("cpu_s") or 0.0
            rm_seen.add(str(Path(r["run_dir"]).parent))
    return round(wall, 1), round(cpu, 1)


def _default_base(sweep: Sweep, points: list[Point]) -> Path | None:
    """The base for rlhf/iterative DPO when they name none: the sweep's base, else the first DPO entry's."""
    if sweep.base:
        return sweep.resolve(sweep.base)
    for p in points:
        if p.algorithm == "dpo":
            return p.recipe.source_path
    for e in sweep.grid:
        if e.algorithm == "dpo" and e.base:
            return sweep.resolve(e.base)
    return None


def _validate_section(cls, raw: dict, where: str):
    try:
        return cls(**raw)
    except ValidationError as err:
        raise _explain(err, where, cls) from None


def _side_run(kind: str, seed: int, fn, out_dir: Path, rerun: bool, eval_fp, section, base) -> list[dict]:
    from prefopt import manifest
    from prefopt.recipe import dump_resolved

    run_dir = out_dir / "points" / f"{kind}-seed{seed}"
    fp = _fingerprint(
        {
            "section": section.model_dump(mode="json"),
            "base": dump_resolved(base),
            "eval": eval_fp,
            "seed": seed,
        }
    )
    if not rerun:
        try:
            prev = json.loads((run_dir / "points.json").read_text())
            if prev.get("fingerprint") == fp and all(p.get("status") == "finished" for p in prev["points"]):
                log.info("compare %s seed %d: finished earlier, reused", kind, seed)
                return prev["points"]
        except (OSError, ValueError, KeyError):
            pass
    log.info("compare %s seed %d", kind, seed)
    try:
        with Measure() as m:
            res = fn(run_dir, seed)
        pts = res["points"]
        for p in pts:
            p.setdefault("run_dir", str(run_dir))
        # the stage's totals go on its last point (the final policy); earlier ones carry their own timings
        pts[-1].setdefault("total", m.result)
    except PrefoptError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.exception("compare: %s failed", kind)
        pts = [
            {
                "name": f"{kind}-seed{seed}",
                "algorithm": kind,
                "params": {},
                "seed": seed,
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "run_dir": str(run_dir),
            }
        ]
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest.write_json(run_dir / "points.json", {"fingerprint": fp, "points": pts})
    for p in pts:
        _log_point(p)
    return pts


def _log_point(res: dict) -> None:
    ev = res.get("eval") or {}
    if res.get("status") != "finished":
        log.warning("compare %s: %s (%s)", res["name"], res.get("status"), res.get("error"))
        return
    log.info(
        "compare %s: reward %.3f (greedy %.3f), KL %.3f, pref acc %s, %.0fs",
        res["name"],
        ev.get("reward_sampled", float("nan")),
        ev.get("reward_greedy", float("nan")),
        ev.get("kl_to_reference", float("nan")),
        _num(ev.get("pref_accuracy")),
        res.get("wall_s") or 0,
    )


# --------------------------------------------------------------------------------------------- reporting
def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def param_label(res: dict) -> str:
    params = res.get("params") or {}
    return ", ".join(f"{SYMBOLS.get(k, k)}={_fmt(v)}" for k, v in params.items())


def _sort_key(res: dict):
    alg = res.get("algorithm", "")
    order = ALGORITHM_ORDER.index(alg) if alg in ALGORITHM_ORDER else len(ALGORITHM_ORDER)
    params = res.get("params") or {}
    main = MAIN_PARAM.get(alg)
    vals = tuple(
        float(v) if isinstance(v, (int, float)) else 0.0
        for v in ([params.get(main)] if main in params else [])
        + [v for k, v in sorted(params.items()) if k != main]
    )
    return (order, alg, vals, res.get("seed") or 0)


def sorted_rows(summary: dict) -> list[dict]:
    return [summary["reference"], *sorted(summary["points"], key=_sort_key)]


def format_markdown(summary: dict) -> str:
    rows = sorted_rows(summary)
    ev = summary["evaluation"]
    n_prompts = (summary["reference"].get("eval") or {}).get("num_prompts", ev["num_prompts"])
    lines = [
        f"# prefopt compare — world task `{summary['task']}`",
        "",
        f"Sweep: `{summary.get('sweep')}` · wall time {summary['wall_s']:.0f} s (this invocation; all points: "
        f"{summary.get('points_wall_s', summary['wall_s']):.0f} s wall, {summary.get('points_cpu_s', 0):.0f} s CPU) · "
        f"{summary['hardware'].get('cpu_count')} CPU(s), torch threads {summary.get('torch_threads')} · "
        f"load average at start {summary['load_average']['start'][0]:.1f}",
        "",
        "| algorithm | parameters | seed | true reward (sampled) | true reward (greedy) | KL to ref | "
        "pref. acc. | logp acc. | train s | wall s | CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r.get("eval") or {}
        if r.get("status") != "finished":
            lines.append(
                f"| {r['algorithm']} | {param_label(r)} | {r.get('seed')} | failed: {r.get('error')} "
                "| | | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['algorithm']} | {param_label(r) or '—'} | {_num(r.get('seed'))} | {_num(e.get('reward_sampled'))} | "
            f"{_num(e.get('reward_greedy'))} | {_num(e.get('kl_to_reference'))} | {_num(e.get('pref_accuracy'))} | "
            f"{_num(e.get('logp_accuracy'))} | {_num(r.get('train_s'), 1)} | "
            f"{_num(r.get('cumulative_wall_s', r.get('wall_s')), 1)} | "
            f"{_num(r.get('cumulative_cpu_s', r.get('cpu_s')), 1)} | {_num(r.get('peak_rss_mb'), 0)} |"
        )
    lines += [
        "",
        f"True reward: mean exact-answer reward on {n_prompts} held-out prompts, {ev['samples_per_prompt']} "
        f"samples each at T = 1 (sampled) and one greedy answer; KL(π‖π_ref) on those samples (nats/sequence). "
        f"Pref. acc.: held-out pairs (drawn from {ev['pref_prompts']} world test prompts) ranked by log π − log π_ref "
        "(summed over the reply, the same for every algorithm); logp acc.: ranked by log π alone. "
        "Wall/CPU s and peak RSS cover training and evaluation of the point (rlhf: reward model + policy; "
        "iterative DPO: cumulative up to that round, sampling and per-round evaluation included); train s is "
        "training alone (iterative DPO: that round's). Peak RSS is the whole process's.",
    ]
    cmp = summary.get("iterative_vs_offline_dpo")
    if cmp:
        lines += ["", "## Iterative vs offline DPO", "", cmp["text"]]
    lines += ["", "![frontier](frontier.png)", ""]
    return "\n".join(lines)


def iterative_vs_offline(results: list[dict]) -> dict | None:
    """Iterative DPO's final round against offline DPO at comparable KL: the offline frontier (the best
    offline reward at a KL no larger than iterative's × 1.25) and the nearest-KL offline point."""
    it = [
        r
        for r in results
        if r.get("algorithm") == "iterative_dpo" and r.get("status") == "finished" and r.get("final")
    ]
    off = [r for r in results if r.get("algorithm") == "dpo" and r.get("status") == "finished"]
    if not it or not off:
        return None
    out = []
    for final in it:
        kl = final["eval"]["kl_to_reference"]
        reward = final["eval"]["reward_sampled"]
        # the same seed's offline points when there are any (same data draw and evaluation), else all
        pool = [r for r in off if r.get("seed") == final.get("seed")] or off
        nearest = min(pool, key=lambda r: abs(r["eval"]["kl_to_reference"] - kl))
        within = [r for r in pool if r["eval"]["kl_to_reference"] <= max(kl * 1.25, kl + 0.05)]
        best = max(within, key=lambda r: r["eval"]["reward_sampled"]) if within else None
        out.append(
            {
                "iterative": {"name": final["name"], "reward_sampled": reward, "kl": kl},
                "nearest_offline": {
                    "name": nearest["name"],
                    "reward_sampled": nearest["eval"]["reward_sampled"],
                    "kl": nearest["eval"]["kl_to_reference"],
                },
                "best_offline_at_comparable_kl": None
                if best is None
                else {
                    "name": best["name"],
                    "reward_sampled": best["eval"]["reward_sampled"],
                    "kl": best["eval"]["kl_to_reference"],
                },
                "beats_offline": best is None or reward > best["eval"]["reward_sampled"],
            }
        )
    first = out[0]
    b = first["best_offline_at_comparable_kl"]
    text = (
        f"Iterative DPO ({first['iterative']['name']}): true reward {first['iterative']['reward_sampled']:.3f} at "
        f"KL {first['iterative']['kl']:.3f}. "
    )
    if b is None:
        text += "No offline DPO point has a KL that low or lower."
    else:
        text += (
            f"Best offline DPO at KL ≤ max(1.25 × that, +0.05): {b['name']}, {b['reward_sampled']:.3f} at KL "
            f"{b['kl']:.3f} → iterative {'beats' if first['beats_offline'] else 'does not beat'} offline "
            f"({first['iterative']['reward_sampled'] - b['reward_sampled']:+.3f})."
        )
    n = first["nearest_offline"]
    if b is None or n["name"] != b["name"]:
        text += (
            f" Nearest-KL offline DPO: {n['name']}, {n['reward_sampled']:.3f} at KL {n['kl']:.3f} "
            f"({first['iterative']['reward_sampled'] - n['reward_sampled']:+.3f})."
        )
    if len(out) > 1:
        import statistics

        def spread(values: list[float]) -> str:
            return f"{statistics.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})"

        wins = sum(o["beats_offline"] for o in out)
        near = [o["nearest_offline"] for o in out]
        text = (
            f"Over {len(out)} seeds, iterative DPO's final round: true reward "
            f"{spread([o['iterative']['reward_sampled'] for o in out])} at KL "
            f"{spread([o['iterative']['kl'] for o in out])}; the same seeds' nearest-KL offline DPO: "
            f"{spread([n['reward_sampled'] for n in near])} at KL {spread([n['kl'] for n in near])}. "
            f"Iterative beats offline DPO at comparable KL on {wins} of {len(out)} seeds. Per seed: {text}"
        )
        for o in out[1:]:
            b = o["best_offline_at_comparable_kl"]
            text += (
                f" {o['iterative']['name']}: {o['iterative']['reward_sampled']:.3f} at KL {o['iterative']['kl']:.3f}"
                + (
                    f" vs {b['name']} {b['reward_sampled']:.3f} at KL {b['kl']:.3f}."
                    if b
                    else f" (no offline point at that KL or lower; nearest {o['nearest_offline']['name']} "
                    f"{o['nearest_offline']['reward_sampled']:.3f} at KL {o['nearest_offline']['kl']:.3f})."
                )
            )
    if len({r.get("seed") for r in off}) < 2:
        text += " One training seed per point: add seeds (`seeds: [...]`) before reading gaps of a few hundredths."
    return {"runs": out, "beats_offline": all(o["beats_offline"] for o in out), "text": text}


def plot_frontier(summary: dict, path: Path) -> Path:
    """True reward (sampled and greedy) against KL to the reference, one marker/colour per algorithm,
    the swept parameter annotated; iterative DPO's rounds joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {
        "reference": ("black", "*"),
        "dpo": ("tab:blue", "o"),
        "ipo": ("tab:orange", "s"),
        "kto": ("tab:green", "^"),
        "orpo": ("tab:red", "D"),
        "simpo": ("tab:purple", "v"),
        "rlhf": ("tab:brown", "P"),
        "iterative_dpo": ("tab:cyan", "X"),
    }
    rows = [r for r in sorted_rows(summary) if r.get("status") == "finished" and r.get("eval")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, metric, title in (
        (axes[0], "reward_sampled", "true reward, sampled (T = 1)"),
        (axes[1], "reward_greedy", "true reward, greedy"),
    ):
        by_alg: dict[str, list[dict]] = {}
        for r in rows:
            by_alg.setdefault(r["algorithm"], []).append(r)
        for alg, rs in by_alg.items():
            color, marker = styles.get(alg, ("gray", "o"))
            xs = [r["eval"].get("kl_to_reference", 0.0) for r in rs]
            ys = [r["eval"][metric] for r in rs]
            ax.scatter(
                xs,
                ys,
                c=color,
                marker=marker,
                s=90 if alg == "reference" else 55,
                label=alg,
                edgecolors="black",
                linewidths=0.4,
                zorder=3,
            )
            if alg == "iterative_dpo":
                order = sorted(
                    range(len(rs)), key=lambda i: (rs[i].get("seed") or 0, rs[i]["params"].get("round", 0))
                )
                ax.plot([xs[i] for i in order], [ys[i] for i in order], c=color, lw=1, zorder=2)
            offsets = ((5, 4), (5, -9), (-8, 8))  # neighbours of one algorithm often sit close together
            for i, (r, x, y) in enumerate(zip(rs, xs, ys)):
                label = _short_label(r)
                if label:
                    ax.annotate(
                        label,
                        (x, y),
                        textcoords="offset points",
                        xytext=offsets[i % len(offsets)],
                        fontsize=7,
                        color=color if alg != "reference" else "black",
                    )
        # symlog: readable near the reference (KL ≈ 0, estimates can be slightly negative) and far out
        ax.set_xscale("symlog", linthresh=0.1, linscale=0.5)
        ax.set_xlabel("KL(π ‖ π_ref) on samples (nats / sequence, symlog)")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"prefopt compare — world:{summary['task']} (held-out prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _short_label(r: dict) -> str:
    params = r.get("params") or {}
    if r["algorithm"] == "iterative_dpo" and "round" in params:
        return f"r{params['round']}"
    if r["algorithm"] == "reference":
        return "ref"
    main = MAIN_PARAM.get(r["algorithm"])
    if main and main in params:
        return f"{SYMBOLS.get(main, main)}={_fmt(params[main])}"
    if "beta" in params:
        return f"β={_fmt(params['beta'])}"
    return ""
