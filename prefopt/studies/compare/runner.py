"""Running a sweep: :func:`plan_sweep` validates everything it will run (grid points, the RLHF and
iterative-DPO sections and their base recipes) before anything trains; :func:`run_sweep` trains and
measures each grid point (:func:`run_point`, reusing points finished earlier with the same
fingerprint), then the side studies, then writes compare.json, compare.md and frontier.png."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prefopt import world
from prefopt.config.algorithms import DPO
from prefopt.config.recipe import dump_resolved, load_recipe
from prefopt.config.schema import validate
from prefopt.core.errors import PrefoptError
from prefopt.core.runtime import torch_threads
from prefopt.data.tokenized import TokenizedCache
from prefopt.judge.length import recipe_judge
from prefopt.model.loading import load_model, load_trained
from prefopt.pipeline import manifest
from prefopt.pipeline.run import check_judges
from prefopt.studies.compare.plots import plot_frontier
from prefopt.studies.compare.sweep import CHOICES, Point, Sweep, expand_grid
from prefopt.studies.compare.tables import fmt_number, format_markdown, iterative_vs_offline
from prefopt.studies.iterative import IterativeDPOSection, check_section, run_iterative_dpo
from prefopt.studies.measure import Measure, WorldEvaluator, world_task
from prefopt.studies.rlhf import RLHFSection, defence_label, run_rlhf
from prefopt.training.algorithms import get_adapter
from prefopt.training.build import build_trainer, save_model, settle_on_data
from prefopt.training.callbacks import MetricsJsonlCallback
from prefopt.training.fit import fit
from prefopt.training.health import ONLINE_KL, HealthCallback
from prefopt.training.plan import resolve_batch

log = logging.getLogger("prefopt")

SECTION_SCHEMAS = {"rlhf": RLHFSection, "iterative_dpo": IterativeDPOSection}
"""The schema of each side study's section of a sweep."""


# --------------------------------------------------------------------------------------------- schema


# --------------------------------------------------------------------------------------------- points


# --------------------------------------------------------------------------------------------- measuring


# --------------------------------------------------------------------------------------------- running


def run_point(point: Point, run_dir: Path, evaluate: Callable, data_cache: TokenizedCache) -> dict:
    """Train one grid point (the pipeline of :func:`prefopt.pipeline.run.train`, on cached tokenised data,
    through :func:`prefopt.training.fit.fit`) and measure it. A non-finite loss marks the point failed
    (``nonfinite`` holds the step and term); it is neither saved nor evaluated, and the sweep goes on.

    An online point (``algorithm: online_dpo``) gets what ``prefopt train`` gives it: the judge of its
    ``online:`` block (:func:`prefopt.judge.length.recipe_judge`, length penalty included) and the health
    callback carrying ``online.kl_budget`` (the ``kl_high`` stop); its row adds ``online`` (the logged judge
    score, ties, sampled KL and length, and whether the budget stopped it)."""

    recipe = point.recipe
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved.yaml").write_text(dump_resolved(recipe))
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    adapter = get_adapter(recipe.algorithm)
    health = None
    with Measure() as m:
        training = resolve_batch(recipe)
        training.setdefault("save_strategy", "no")  # a sweep point is short: no intermediate checkpoints
        model, tokenizer = load_model(recipe.model, seed=recipe.seed)
        train_tok, eval_tok, train_ds, _eval_ds, report = data_cache.get(recipe, tokenizer)
        report.save(run_dir / "data_report.json")
        recipe, data_settings = settle_on_data(recipe, train_ds)
        config = adapter.trl_config(recipe, output_dir=str(run_dir / "checkpoints"), training=training)
        metrics = MetricsJsonlCallback(run_dir / "metrics.jsonl")
        callbacks: list = [metrics]
        judge = recipe_judge(recipe, tokenizer)  # None for an offline point
        if judge is not None:
            health = HealthCallback.from_recipe(recipe, metrics.write)  # online.kl_budget → kl_high stop
            callbacks.append(health)
        trainer = build_trainer(
            recipe,
            model,
            tokenizer,
            train_tok,
            eval_tok,
            output_dir=str(run_dir / "checkpoints"),
            callbacks=callbacks,
            config=config,
        )
        if judge is not None:
            trainer.judge = judge  # as prefopt.pipeline.run.fit_recipe hands it over
            health.attach(trainer)
        result = fit(trainer, metrics_writer=metrics.write)
        policy = result.model
        evaluation = None
        if result.finished:  # a failed run's weights are neither saved nor measured
            if recipe.output.save_model:
                save_model(trainer, tokenizer, run_dir / "model")
            evaluation = evaluate(policy)
    out = {
        "name": point.name,
        "algorithm": point.algorithm,
        "params": point.params,
        "seed": point.seed,
        "status": result.status,
        "error": result.error,
        "nonfinite": result.record(),
        "run_dir": str(run_dir),
        "trainer": adapter.describe(recipe)["trainer"],
        "global_step": result.global_step,
        "train_loss": result.train_loss,
        "train_rows": len(train_tok),
        "data_settings": data_settings,
        "train_s": round(result.train_s, 2),
        **m.result,
        "eval": evaluation,
    }
    if judge is not None:
        out["online"] = online_summary(run_dir / "metrics.jsonl", recipe, judge, health)
    manifest.write_json(run_dir / "point.json", out)
    del trainer, model, policy
    gc.collect()
    return out


ONLINE_KEYS = {"score": "online/score", "ties": "online/ties", "kl": ONLINE_KL, "length": "online/length"}
"""An online point's logged statistics (:mod:`prefopt.training.online`) summarised in its row."""


def online_summary(metrics_path: Path, recipe, judge, health: HealthCallback | None) -> dict:
    """An online point's training statistics from its metrics.jsonl: the mean and the last logged value of
    the judge's score, the tie fraction, the sampled KL and the reply length; the judge; and the KL budget's
    stop (the step and KL of the ``kl_high`` warning that stopped training, else None)."""
    series: dict[str, list[float]] = {k: [] for k in ONLINE_KEYS}
    try:
        lines = metrics_path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        for k, key in ONLINE_KEYS.items():
            v = rec.get(key)
            if isinstance(v, (int, float)):
                series[k].append(float(v))
    out: dict[str, Any] = {
        f"{k}_{how}": (round(sum(v) / len(v), 4) if how == "mean" else round(v[-1], 4)) if v else None
        for k, v in series.items()
        for how in ("mean", "last")
    }
    stop = next(
        (
            r
            for r in (health.fired if health else [])
            if r["warning"] == "kl_high" and r.get("stopped_training")
        ),
        None,
    )
    out.update(
        {
            "logs": len(series["score"]),
            "judge": judge.describe(),
            "k": recipe.online.k,
            "length_penalty": recipe.online.length_penalty,
            "kl_budget": recipe.online.kl_budget,
            "stopped_by_kl_budget": None if stop is None else {"step": stop["step"], "kl": stop["kl"]},
        }
    )
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

    def __init__(self, points, rlhf, iterative_dpo, side_bases, task, rlhf_variants=None):
        self.points, self.rlhf, self.iterative_dpo, self.side_bases, self.task = (
            points,
            rlhf,
            iterative_dpo,
            side_bases,
            task,
        )
        # every rlhf section of the sweep as (kind, section, base): kind "rlhf", "rlhf-ens4", ... (its run dir
        # and name prefix); self.rlhf / side_bases["rlhf"] are the first one's
        self.rlhf_variants = rlhf_variants if rlhf_variants is not None else []


def plan_sweep(sweep: Sweep, only: list[str] | None = None) -> Plan:
    """Validate everything a sweep will run — before anything trains."""

    where = str(sweep._source_path or "<sweep>")
    points = expand_grid(sweep, where)
    # online judges: importable / loadable, checked without weights (as prefopt train --dry-run checks them)
    for p in points:
        if p.recipe.online is not None:
            check_judges(p.recipe)
    if only:
        unknown = set(only) - {p.algorithm for p in points} - {"rlhf", "iterative_dpo"}
        if unknown:
            raise PrefoptError(f"--only {sorted(unknown)[0]}: not in this sweep.", where=where)
    default_base = _default_base(sweep, points)
    if only:
        points = [p for p in points if p.algorithm in only]
    sections: dict[str, Any] = {"rlhf": None, "iterative_dpo": None}
    side_bases = {}
    rlhf_variants: list[tuple[str, Any, Any]] = []
    for key in sections:
        raw = getattr(sweep, key)
        if raw is None or (only and key not in only):
            continue
        many = key == "rlhf" and isinstance(raw, list)
        for i, one in enumerate(raw if many else [raw]):
            label = f"{key}[{i}]" if many else key
            section = _validate_section(SECTION_SCHEMAS[key], one, f"{where}: {label}")
            path = sweep.resolve(section.base) if section.base else default_base
            if path is None:
                raise PrefoptError(
                    f"{label} has no base recipe.",
                    where=where,
                    fix=f"set {label}.base (a DPO world recipe) or the sweep's `base`.",
                )
            base = load_recipe(path, [*sweep.overrides])
            if sections[key] is None:
                sections[key], side_bases[key] = section, base
            if key == "rlhf":
                kind = "rlhf" + defence_label(section)[0]
                if any(kind == k for k, _, _ in rlhf_variants):
                    raise PrefoptError(
                        f"{label} has the same defences as an earlier rlhf section ({kind}).",
                        where=where,
                        fix="give each rlhf section different defences (reward_model.ensemble, "
                        "policy.length_penalty, policy.kl_budget), or sweep policy.beta as a list in one section.",
                    )
                rlhf_variants.append((kind, section, base))
            if key == "iterative_dpo":
                check_section(section, base, f"{where}: {label}")
    tasks = {world_task(p.recipe) for p in points} | {world_task(r) for r in side_bases.values()}
    tasks |= {world_task(b) for _, _, b in rlhf_variants}
    if len(tasks) != 1:
        raise PrefoptError(
            f"the sweep mixes world tasks {sorted(tasks)}; compare one task per sweep.", where=where
        )
    return Plan(points, sections["rlhf"], sections["iterative_dpo"], side_bases, tasks.pop(), rlhf_variants)


def run_sweep(
    sweep: Sweep, *, output_dir: str | Path | None = None, rerun: bool = False, only: list[str] | None = None
) -> dict:
    """Run every point of a sweep and write compare.json, compare.md and frontier.png.

    Points whose run directory already holds a finished result for the same recipe and evaluation
    settings are reused (a re-run continues an interrupted sweep); ``rerun`` runs them again.
    ``only`` restricts the run to some of: the grid's algorithms, ``rlhf``, ``iterative_dpo``."""

    plan = plan_sweep(sweep, only)
    with torch_threads(sweep.threads):
        return _run_plan(sweep, plan, output_dir=output_dir, rerun=rerun)


@dataclass
class Context:
    """What every point of one sweep invocation shares: where it writes, the one measurement (and its
    fingerprint, part of each point's), the tokenised-data cache, and whether finished points rerun."""

    sweep: Sweep
    task: str
    out_dir: Path
    evaluator: WorldEvaluator
    eval_fp: dict
    data_cache: TokenizedCache
    rerun: bool


def _run_plan(sweep: Sweep, plan: Plan, *, output_dir, rerun: bool) -> dict:
    """Grid points, then the side studies, then the summary (compare.json, compare.md, frontier.png)."""
    t_start, load_start = time.perf_counter(), os.getloadavg()
    ctx = _open(sweep, plan, output_dir, rerun)
    results = _run_grid(ctx, plan.points)
    results += _run_studies(ctx, plan)
    return _write_summary(ctx, results, t_start=t_start, load_start=load_start)


def _open(sweep: Sweep, plan: Plan, output_dir, rerun: bool) -> Context:
    """The output directory (with sweep.resolved.json), the reference and its measurement."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(output_dir) if output_dir else Path(sweep.output.format(timestamp=stamp)).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.resolved.json").write_text(json.dumps(sweep.model_dump(mode="json"), indent=2))
    log.info(
        "compare: %d grid point(s)%s%s → %s",
        len(plan.points),
        " + rlhf" if plan.rlhf is not None else "",
        " + iterative DPO" if plan.iterative_dpo is not None else "",
        out_dir,
    )
    ref, tok = load_trained(world.reference_checkpoint(plan.task))
    ref.eval()
    return Context(
        sweep=sweep,
        task=plan.task,
        out_dir=out_dir,
        evaluator=WorldEvaluator(plan.task, ref, tok, sweep.evaluation),
        eval_fp={**sweep.evaluation.model_dump(), "world": world_identity(plan.task)},
        data_cache=TokenizedCache(sweep.reuse_tokenized),
        rerun=rerun,
    )


def _run_grid(ctx: Context, points: list[Point]) -> list[dict]:
    """Every grid point: reused when finished earlier with the same fingerprint, else trained and measured
    (an exception fails that point only)."""
    results: list[dict] = []
    for i, point in enumerate(points, 1):
        run_dir = ctx.out_dir / "points" / point.name
        fp = _fingerprint({"recipe": dump_resolved(point.recipe), "eval": ctx.eval_fp, "task": ctx.task})
        prev = None if ctx.rerun else _finished(run_dir, fp)
        if prev is not None:
            log.info("compare [%d/%d] %s: finished earlier, reused", i, len(points), point.name)
            results.append(prev)
            continue
        log.info("compare [%d/%d] %s", i, len(points), point.name)
        try:
            res = run_point(point, run_dir, ctx.evaluator, ctx.data_cache)
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
    return results


def _run_studies(ctx: Context, plan: Plan) -> list[dict]:
    """The RLHF baseline (each of its sections: plain and defended) and iterative DPO, once per seed,
    measured like the grid."""

    def rlhf(section, base):
        return lambda d, s: run_rlhf(
            section, base, output_dir=d, seed=s, evaluate=ctx.evaluator, data_cache=ctx.data_cache
        )

    studies = [(kind, rlhf(section, base), section, base) for kind, section, base in plan.rlhf_variants]
    if plan.iterative_dpo is not None:
        base = plan.side_bases["iterative_dpo"]
        studies.append(
            (
                "iterative_dpo",
                lambda d, s: run_iterative_dpo(
                    plan.iterative_dpo, base, output_dir=d, seed=s, evaluate=ctx.evaluator
                ),
                plan.iterative_dpo,
                base,
            )
        )
    results: list[dict] = []
    for kind, run, section, base in studies:
        for seed in ctx.sweep.seeds:
            results.extend(_side_run(kind, seed, run, ctx.out_dir, ctx.rerun, ctx.eval_fp, section, base))
    return results


def _write_summary(ctx: Context, results: list[dict], *, t_start: float, load_start) -> dict:
    """compare.json (everything), compare.md (the table) and frontier.png."""
    sweep = ctx.sweep
    summary = {
        "task": ctx.task,
        "sweep": str(sweep._source_path) if sweep._source_path else None,
        "output_dir": str(ctx.out_dir),
        "evaluation": sweep.evaluation.model_dump(),
        "reference": {
            "name": "reference",
            "algorithm": "reference",
            "params": {},
            "seed": None,
            "status": "finished",
            "eval": ctx.evaluator.reference_result,
        },
        "points": results,
        "tokenized_cache_hits": ctx.data_cache.hits,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "hardware": manifest.hardware(),
        "versions": manifest.versions(),
        "git_commit": manifest.git_commit(),
        "torch_threads": torch.get_num_threads(),
    }
    summary["points_wall_s"], summary["points_cpu_s"] = _totals(results)
    summary["iterative_vs_offline_dpo"] = iterative_vs_offline(results)
    manifest.write_json(ctx.out_dir / "compare.json", summary)
    (ctx.out_dir / "compare.md").write_text(format_markdown(summary))
    plot_frontier(summary, ctx.out_dir / "frontier.png")
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
        if p.algorithm == DPO:
            return p.recipe.source_path
    for e in sweep.grid:
        if e.algorithm == DPO and e.base:
            return sweep.resolve(e.base)
    return None


def _validate_section(cls, raw: dict, where: str):
    return validate(cls, raw, where, choices=CHOICES)


def _side_run(kind: str, seed: int, fn, out_dir: Path, rerun: bool, eval_fp, section, base) -> list[dict]:

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
                "algorithm": kind.partition("-")[0],  # a defended RLHF's kind is "rlhf-ens4", ...
                "variant": kind if "-" in kind else None,
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
        fmt_number(ev.get("pref_accuracy")),
        res.get("wall_s") or 0,
    )


# --------------------------------------------------------------------------------------------- reporting
