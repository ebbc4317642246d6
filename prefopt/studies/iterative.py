"""Iterative (online) DPO: rounds of sample → score → pair → DPO, on the policy's own samples.

Each round:

1. **Sample** ``samples_per_prompt`` (k) completions for ``prompts_per_round`` training prompts from the
   *current* policy (:func:`prefopt.model.generation.sample`, temperature ``temperature``; prompts are fresh each
   round while the task's training split lasts).
2. **Score** each completion with ``scorer`` — a dotted path to a Python callable
   ``f(prompt, completion) -> float`` (``module:function`` or ``module.function``; default
   ``prefopt.world:world_reward``, the ground-truth world's true reward) — or with a reward model
   saved by :mod:`prefopt.studies.rlhf` (``reward_model: <run>/reward_model``).
3. **Pair** best against worst per prompt (the highest- and lowest-scoring distinct completions; among
   equal scores the more frequent one, i.e. the policy's dominant answer / dominant mistake). Prompts
   whose samples all score the same (ties) give no pair and are skipped (counted).
4. **DPO round** with :func:`prefopt.training.build.build_trainer` on a recipe derived from the base DPO recipe
   (its loss and training settings, plus this section's ``loss``/``training`` overrides), on the
   pairs tokenised by :mod:`prefopt.data.tokenization` — the same ids as every other trainer.

**Reference.** With ``reference: initial`` (default) every round's DPO reference is the *original*
starting policy (the world reference), as in the iterative-DPO / self-rewarding papers that keep
π_ref fixed: TRL loads it from the starting checkpoint (the world reference's directory, or the
initial weights saved into the run directory for a builtin base). ``reference: previous`` uses the
previous round's policy instead (saved after each round). Evaluation — true reward and KL — is always
against the original reference, after every round.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset
from pydantic import Field

from prefopt.config.algorithms import DPO, get_spec
from prefopt.config.recipe import load_recipe
from prefopt.config.schema import StrictModel, validate
from prefopt.core.errors import PrefoptError
from prefopt.data.schema import compute_prompt_id
from prefopt.data.tokenization import tokenize_dataset
from prefopt.judge.scorers import load_callable, load_reward_model
from prefopt.model.generation import sample
from prefopt.model.loading import load_model
from prefopt.studies.measure import Measure, WorldEvaluator, world_task
from prefopt.training.build import build_trainer, starting_checkpoint
from prefopt.training.callbacks import MetricsJsonlCallback
from prefopt.training.fit import FitResult, fit
from prefopt.training.plan import resolve_batch
from prefopt.world import get_task

log = logging.getLogger("prefopt")


class IterativeDPOSection(StrictModel):
    """``iterative_dpo:`` in a sweep (or a standalone config for :func:`run_iterative_dpo`)."""

    base: str | None = Field(
        None,
        description="Base DPO world recipe (relative to the sweep file); default: "
        "the sweep's base or its first DPO entry's.",
    )
    rounds: int = Field(3, gt=0)
    prompts_per_round: int = Field(1000, gt=0)
    samples_per_prompt: int = Field(4, ge=2, description="k completions per prompt.")
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(8, gt=0)
    scorer: str = Field(
        "prefopt.world:world_reward", description="Dotted path to f(prompt, completion) -> float."
    )
    reward_model: str | None = Field(
        None, description="A reward model directory (prefopt.studies.rlhf); replaces scorer."
    )
    reference: Literal["initial", "previous"] = "initial"
    loss: dict[str, Any] = Field(default_factory=dict, description="DPO loss overrides, e.g. {beta: 0.1}.")
    training: dict[str, Any] = Field(default_factory=dict, description="Training overrides for each round.")
    overrides: list[str] = Field(default_factory=list, description="Extra `section.key=value` overrides.")


# --------------------------------------------------------------------------------------------- scorers


def make_scorer(
    section: IterativeDPOSection, base_dir: Path | None = None
) -> Callable[[list[str], list[str]], list[float]]:
    """A batch scorer ``(prompts, completions) -> scores`` from the section's scorer or reward model."""
    if section.reward_model:
        p = Path(section.reward_model).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        rm = load_reward_model(p)
        return rm.score_text
    fn = load_callable(section.scorer)
    return lambda prompts, completions: [float(fn(p, c)) for p, c in zip(prompts, completions)]


def best_vs_worst(
    prompts: list[str], samples: list[list[str]], scores: list[list[float]]
) -> tuple[list[dict], dict]:
    """One pair per prompt: best against worst distinct completion; ties (all equal) skipped."""

    rows, ties = [], 0
    for p, outs, sc in zip(prompts, samples, scores):
        counts = Counter(outs)
        best_score: dict[str, float] = {}
        for c, s in zip(outs, sc):
            best_score[c] = s
        distinct = list(counts)
        hi = max(best_score[c] for c in distinct)
        lo = min(best_score[c] for c in distinct)
        if hi == lo:
            ties += 1
            continue
        chosen = max((c for c in distinct if best_score[c] == hi), key=lambda c: counts[c])
        rejected = max((c for c in distinct if best_score[c] == lo), key=lambda c: counts[c])
        rows.append(
            {
                "prompt": p,
                "chosen": chosen,
                "rejected": rejected,
                "prompt_id": compute_prompt_id(p),
                "source": "iterative",
                "score_chosen": hi,
                "score_rejected": lo,
            }
        )
    return rows, {"prompts": len(prompts), "pairs": len(rows), "ties_skipped": ties}


# --------------------------------------------------------------------------------------------- rounds
def round_recipe(section: IterativeDPOSection, base_recipe, reference_dir: str, seed: int):
    """The DPO recipe of one round: the base recipe's DPO settings + the section's overrides, with the
    model pointing at the reference directory (so TRL loads the reference from it)."""

    data = base_recipe.to_dict()
    if data["algorithm"] != DPO:
        data["loss"] = {}
    data["algorithm"] = DPO
    data["loss"] = {**data["loss"], **section.loss}
    data["training"] = {**data["training"], **section.training}
    data["seed"] = seed
    data["model"] = {**data["model"], "name": reference_dir}
    data["evaluation"] = {**data["evaluation"], "enabled": False}
    try:
        recipe = load_recipe(data=data, overrides=section.overrides)
    except PrefoptError as err:
        raise PrefoptError(
            f"the iterative DPO round recipe is invalid: {err}", where="iterative_dpo"
        ) from None
    recipe._source_path = base_recipe.source_path
    return recipe


def _round_prompts(pool: list[str], n: int, r: int, rng_seed: int) -> list[str]:
    order = list(pool)
    random.Random(rng_seed).shuffle(order)
    if n * r <= len(order):  # fresh prompts each round while the split lasts
        return order[n * (r - 1) : n * r]
    return random.Random(rng_seed + r).sample(order, min(n, len(order)))


def sample_round_pairs(
    policy, tokenizer, section: IterativeDPOSection, scorer, prompts: list[str], seed: int
) -> tuple[list[dict], dict]:
    """Steps 1–3 of a round: sample k completions per prompt from the current policy, score them, pair
    best against worst. Returns the pairs (canonical paired rows) and the round's statistics."""
    samples = sample(
        policy,
        tokenizer,
        prompts,
        num_samples=section.samples_per_prompt,
        temperature=section.temperature,
        max_new_tokens=section.max_new_tokens,
        seed=seed,
    )
    flat_p = [p for p, outs in zip(prompts, samples) for _ in outs]
    flat_c = [c for outs in samples for c in outs]
    flat_s = scorer(flat_p, flat_c)
    k = section.samples_per_prompt
    scores = [flat_s[i * k : (i + 1) * k] for i in range(len(prompts))]
    rows, stats = best_vs_worst(prompts, samples, scores)
    stats["mean_score"] = sum(flat_s) / len(flat_s)
    return rows, stats


def train_round(recipe, policy, tokenizer, rows: list[dict], rdir: Path, reference_dir: str) -> FitResult:
    """Step 4 of a round: one DPO run on the round's pairs (prefopt's tokenisation, the adapter's
    trainer, :func:`prefopt.training.fit.fit`), the reference loaded by TRL from ``reference_dir``."""
    train_tok, _ = tokenize_dataset(
        Dataset.from_list(rows),
        get_spec(DPO).data_kind,
        tokenizer,
        recipe.training.get("max_length"),
        recipe.training.get("max_prompt_length"),
    )
    training = resolve_batch(recipe)
    training.setdefault("save_strategy", "no")
    policy.config._name_or_path = reference_dir  # TRL's DPOTrainer loads the reference from here
    metrics = MetricsJsonlCallback(rdir / "metrics.jsonl")
    trainer = build_trainer(
        recipe,
        policy,
        tokenizer,
        train_tok,
        None,
        output_dir=str(rdir / "checkpoints"),
        callbacks=[metrics],
        training=training,
    )
    return fit(trainer, metrics_writer=metrics.write)


def run_iterative_dpo(
    section: IterativeDPOSection | dict,
    base_recipe,
    *,
    output_dir: str | Path,
    seed: int | None = None,
    evaluate: Callable | None = None,
) -> dict:
    """Run the rounds; returns ``{"points": [...]}`` with one point per round (``algorithm:
    iterative_dpo``, ``params: {round, beta}``, ``final`` on the last), each evaluated with ``evaluate``
    (default :class:`prefopt.studies.measure.WorldEvaluator`) against the original reference.

    A round whose loss turns non-finite is marked failed (neither saved nor evaluated) and ends the
    study: later rounds would sample from its policy."""
    if isinstance(section, dict):
        section = validate(IterativeDPOSection, section, "iterative_dpo")
    seed = base_recipe.seed if seed is None else seed
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = world_task(base_recipe)
    base_dir = base_recipe.source_path.parent if base_recipe.source_path else None
    scorer = make_scorer(section, base_dir)
    if evaluate is None:
        evaluate = WorldEvaluator.for_task(task)
    policy, tokenizer = load_model(base_recipe.model, seed=seed)
    reference_dir = starting_checkpoint(base_recipe, run_dir, policy)
    initial_dir = reference_dir
    pool = get_task(task).split("train")
    points: list[dict] = []
    t0 = time.perf_counter()
    cum_cpu = 0.0
    for r in range(1, section.rounds + 1):
        rdir = run_dir / f"round{r}"
        rdir.mkdir(parents=True, exist_ok=True)
        recipe = round_recipe(section, base_recipe, reference_dir, seed)
        with Measure() as m:
            ts = time.perf_counter()
            prompts = _round_prompts(pool, section.prompts_per_round, r, seed)
            rows, stats = sample_round_pairs(policy, tokenizer, section, scorer, prompts, seed * 1000 + r)
            sample_s = time.perf_counter() - ts
            log.info(
                "iterative DPO round %d: %d pairs from %d prompts (%d ties skipped), mean score %.3f",
                r,
                stats["pairs"],
                stats["prompts"],
                stats["ties_skipped"],
                stats["mean_score"],
            )
            tt = time.perf_counter()
            result = train_round(recipe, policy, tokenizer, rows, rdir, reference_dir) if rows else None
            train_s = time.perf_counter() - tt
            failed = result is not None and not result.finished
            steps, train_loss = (result.global_step, result.train_loss) if result else (0, None)
            fit_error, fit_record = (result.error, result.record()) if result else (None, None)
            evaluation = None
            if not failed:
                if result is not None:
                    policy = result.model
                if section.reference == "previous":
                    policy.save_pretrained(rdir / "model", safe_serialization=True)
                    reference_dir = str(rdir / "model")
                policy.config._name_or_path = initial_dir
                evaluation = evaluate(policy)
            del result
        cum_cpu += m.result["cpu_s"]
        point = {
            "name": f"iterative_dpo-round{r}-seed{seed}",
            "algorithm": "iterative_dpo",
            "params": {"round": r, "beta": recipe.loss_params.beta},
            "seed": seed,
            "status": "failed" if failed else "finished",
            "error": fit_error,
            "nonfinite": fit_record,
            "final": r == section.rounds,
            "run_dir": str(rdir),
            "round": stats,
            "global_step": steps,
            "train_loss": train_loss,
            "train_rows": stats["pairs"],
            "sample_s": round(sample_s, 2),
            "train_s": round(train_s, 2),
            **m.result,
            "eval": evaluation,
            "reference": "initial" if section.reference == "initial" else "previous round",
            "cumulative_wall_s": round(time.perf_counter() - t0, 2),
            "cumulative_cpu_s": round(cum_cpu, 2),
        }
        points.append(point)
        if failed:
            log.warning("iterative DPO round %d: %s; stopping", r, point["error"])
            break
        log.info(
            "iterative DPO round %d: true reward %.3f, KL %.3f",
            r,
            evaluation.get("reward_sampled", float("nan")),
            evaluation.get("kl_to_reference", float("nan")),
        )
    return {"points": points, "wall_s": round(time.perf_counter() - t0, 2)}
