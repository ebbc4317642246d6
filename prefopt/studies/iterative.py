"""Iterative (online) DPO: rounds of sample → score → pair → DPO, on the policy's own samples.

Each round:

1. **Sample** ``samples_per_prompt`` (k) completions for ``prompts_per_round`` training prompts from the
   *current* policy (:func:`prefopt.model.generation.sample`, temperature ``temperature``; prompts are fresh each
   round while the task's training split lasts).
2. **Score** each completion with ``scorer`` — a dotted path to a Python callable
   ``f(prompt, completion) -> float`` (``module:function`` or ``module.function``; default
   ``prefopt.world:world_reward``, the ground-truth world's true reward) — with a reward model
   saved by :mod:`prefopt.studies.rlhf` (``reward_model: <run>/reward_model``), or with ``judge:``, a judge
   block as in ``online.judge`` (docs/judges.md: ``callable``, ``reward_model``, ``ensemble`` — e.g. a
   pessimistic ensemble with ``combine: min`` or ``mean_minus_std``). A failed score (None) is left out.
3. **Pair** best against worst per prompt (the highest- and lowest-scoring distinct completions; among
   equal scores the more frequent one, i.e. the policy's dominant answer / dominant mistake). Prompts
   whose samples all score the same (ties) give no pair and are skipped (counted).
4. **DPO round** with :func:`prefopt.training.build.build_trainer` on a recipe derived from the base DPO recipe
   (its loss and training settings, plus this section's ``loss``/``training`` overrides), on the
   pairs tokenised by :mod:`prefopt.data.tokenization` — the same ids as every other trainer.

**Defences** (each one field, recorded on every round's point under ``defences``):
``judge`` (above; a pessimistic ensemble), ``length_penalty`` (α per reply token, in the policy's tokens,
off the score: :func:`prefopt.judge.length.length_penalised`, the online judge's penalty) and
``kl_budget`` (nats per sequence: when a finished round's sampled KL to the starting model, from its
evaluation, passes the budget, no further round runs; that round's point is ``final`` and holds
``stopped: {reason: kl_budget, round, kl, kl_budget}``).

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
from pydantic import Field, model_validator

from prefopt.config.algorithms import DPO, get_spec
from prefopt.config.recipe import load_recipe
from prefopt.config.schema import StrictModel, validate
from prefopt.core.errors import PrefoptError
from prefopt.data.schema import compute_prompt_id
from prefopt.data.tokenization import tokenize_dataset
from prefopt.judge import build_judge, parse_judge_config
from prefopt.judge.generate_config import preflight_judge
from prefopt.judge.length import length_penalised
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


DEFAULT_SCORER = "prefopt.world:world_reward"
"""Iterative DPO's scorer when the section names none: the ground-truth world's true reward."""


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
    scorer: str = Field(DEFAULT_SCORER, description="Dotted path to f(prompt, completion) -> float.")
    reward_model: str | None = Field(
        None, description="A reward model directory (prefopt.studies.rlhf); replaces scorer."
    )
    judge: dict[str, Any] | None = Field(
        None,
        description="A judge block as online.judge (docs/judges.md), e.g. a pessimistic ensemble; replaces "
        "scorer and reward_model.",
    )
    length_penalty: float = Field(
        0.0, ge=0, description="Defence: α, subtracted from each score per reply token (0 = off)."
    )
    kl_budget: float | None = Field(
        None,
        gt=0,
        description="Defence: no further round once a round's sampled KL to the starting model passes this "
        "many nats per sequence.",
    )
    reference: Literal["initial", "previous"] = "initial"
    loss: dict[str, Any] = Field(default_factory=dict, description="DPO loss overrides, e.g. {beta: 0.1}.")
    training: dict[str, Any] = Field(default_factory=dict, description="Training overrides for each round.")
    overrides: list[str] = Field(default_factory=list, description="Extra `section.key=value` overrides.")

    @model_validator(mode="after")
    def _one_scorer(self):
        if self.judge is not None and (self.reward_model is not None or self.scorer != DEFAULT_SCORER):
            raise ValueError(
                "give one of judge, reward_model and scorer: judge replaces both (a callable scorer is "
                '`judge: {type: callable, function: "module:function"}`)'
            )
        return self

    def defences(self) -> dict[str, Any]:
        """What each round's point records of the defences."""
        judge = (
            self.judge
            if self.judge is not None
            else ({"reward_model": self.reward_model} if self.reward_model else {"scorer": self.scorer})
        )
        return {"judge": judge, "length_penalty": self.length_penalty, "kl_budget": self.kl_budget}


# --------------------------------------------------------------------------------------------- scorers


def _judge_base(base_recipe) -> str | None:
    return str(base_recipe.source_path.parent) if base_recipe.source_path else None


def check_section(section: IterativeDPOSection, base_recipe, where: str = "iterative_dpo") -> None:
    """The section's judge checked as far as it can be without loading weights (a callable's function
    imports, a reward model's checkpoint has a one-logit head); paths relative to the base recipe's folder."""
    if section.judge is not None:
        key = f"{where}.judge"
        preflight_judge(parse_judge_config(section.judge, key), key, _judge_base(base_recipe))


def make_scorer(
    section: IterativeDPOSection, base_dir: Path | None = None, tokenizer=None
) -> Callable[[list[str], list[str]], list[float | None]]:
    """A batch scorer ``(prompts, completions) -> scores`` from the section's judge, reward model or scorer,
    less ``length_penalty`` per reply token (``tokenizer``: the policy's; None: characters)."""
    score = _base_scorer(section, base_dir)
    if section.length_penalty <= 0:
        return score
    alpha = section.length_penalty
    return lambda prompts, completions: length_penalised(
        score(prompts, completions), completions, alpha, tokenizer
    )


def _base_scorer(section: IterativeDPOSection, base_dir: Path | None):
    if section.judge is not None:
        judge = build_judge(
            section.judge, where="iterative_dpo.judge", base_dir=str(base_dir) if base_dir else None
        )
        return judge.score
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
        kept = [(c, s) for c, s in zip(outs, sc) if s is not None]  # a failed score is left out
        outs, sc = [c for c, _ in kept], [s for _, s in kept]
        if not outs:
            ties += 1
            continue
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
    valid = [x for x in flat_s if x is not None]
    stats["mean_score"] = sum(valid) / len(valid) if valid else None
    stats["failed_scores"] = len(flat_s) - len(valid)
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
    check_section(section, base_recipe)
    if evaluate is None:
        evaluate = WorldEvaluator.for_task(task)
    policy, tokenizer = load_model(base_recipe.model, seed=seed)
    scorer = make_scorer(section, base_dir, tokenizer)
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
                "iterative DPO round %d: %d pairs from %d prompts (%d ties skipped), mean score %s",
                r,
                stats["pairs"],
                stats["prompts"],
                stats["ties_skipped"],
                "—" if stats["mean_score"] is None else f"{stats['mean_score']:.3f}",
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
        stopped = None if failed or r == section.rounds else budget_stop(section, r, evaluation)
        point = {
            "name": f"iterative_dpo-round{r}-seed{seed}",
            "algorithm": "iterative_dpo",
            "params": {"round": r, "beta": recipe.loss_params.beta},
            "seed": seed,
            "status": "failed" if failed else "finished",
            "error": fit_error,
            "nonfinite": fit_record,
            "final": r == section.rounds or stopped is not None,
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
            "defences": section.defences(),
            "stopped": stopped,
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
        if stopped is not None:
            log.warning(
                "iterative DPO: round %d's KL %.3f passed kl_budget %g; no round %d (of %d)",
                r,
                stopped["kl"],
                section.kl_budget,
                r + 1,
                section.rounds,
            )
            break
    return {
        "points": points,
        "wall_s": round(time.perf_counter() - t0, 2),
        "stopped": points[-1]["stopped"] if points else None,
    }


def budget_stop(section: IterativeDPOSection, r: int, evaluation: dict | None) -> dict | None:
    """Why no round follows round ``r``: its sampled KL to the starting model (its evaluation's
    ``kl_to_reference``) passed ``kl_budget``. None: go on (no budget, or within it, or no KL measured)."""
    if section.kl_budget is None or not evaluation:
        return None
    kl = evaluation.get("kl_to_reference")
    if kl is None or not kl > section.kl_budget:
        return None
    return {
        "reason": "kl_budget",
        "round": r,
        "kl": float(kl),
        "kl_budget": section.kl_budget,
        "rounds_skipped": section.rounds - r,
    }
