"""The RLHF baseline: a Bradley-Terry reward model trained on the same preference pairs, then the policy
trained against it on-policy with a KL penalty to the same reference (the classic "DPO vs PPO" study).

1. **Reward model** — trained as ``algorithm: reward`` (:mod:`prefopt.training.algorithms.reward`:
   ``trl.RewardTrainer``, loss −log σ(r(x, y_w) − r(x, y_l))) on the base recipe's world pairs, tokenised
   once by prefopt (:func:`prefopt.data.tokenized.prepare_data`; the same rows, ids and dedupe as the DPO
   points), through :func:`prefopt.training.fit.fit` like every run. Each sequence is
   ``prompt_ids + completion_ids`` exactly as the policy sees it, EOS included; the scalar is read at the
   last non-pad token (the EOS). The model is a sequence classifier (``num_labels=1``, ``pad_token_id``
   from the tokenizer): with ``reward_model.init: reference`` (default) the world reference's trunk plus
   a fresh linear head, with ``init: builtin`` a freshly initialised builtin model.
2. **Policy** — ``trl.RLOOTrainer`` (REINFORCE leave-one-out, Ahmadian et al. 2024; ``policy.trainer:
   grpo`` picks ``trl.GRPOTrainer``) with generation by ``transformers.generate`` (``use_vllm=False``),
   ``num_generations`` samples per prompt, at most ``max_completion_length`` new tokens, temperature 1.
   The KL penalty is RLOO's: ``beta`` × the sequence log-ratio log π(y|x) − log π_ref(y|x) subtracted
   from the reward (GRPO: β·KL in the loss). The reference is the world reference itself: TRL loads it
   from the policy's checkpoint path, which for ``world:<task>`` is :func:`prefopt.world.reference_checkpoint`
   (for a builtin base, the initial weights are saved to the run dir first). Prompts are the distinct
   prompts of the preference data, as text.

Tokenisation: RLOO/GRPO tokenise text prompts with ``processing_class(text=prompts)`` (special tokens
on), which is :func:`prefopt.data.tokenization.encode_prompt` for text prompts — for the builtin byte-level
tokenizer, no BOS either way; :func:`check_prompt_tokenisation` asserts it before training. The reward
model is passed to TRL as a *callable* (:class:`RewardModelScorer`), not as a model: TRL scores a model
by re-tokenising ``prompt + decoded completion`` with ``add_special_tokens=False`` and no EOS, which is
not what the reward model was trained on; the scorer uses the generated ids, cut after the first EOS.

The world's true reward is logged during training as a second reward function with weight 0
(``rewards/true_reward/mean`` in ``metrics.jsonl``); it never reaches the loss.

Defences against over-optimising the reward model (each one field; docs/compare.md "Defended RLHF"):

* ``reward_model.ensemble`` — ``members`` reward models, each trained exactly as the single one (same
  recipe, :func:`fit`) on its own rows of the paired data (:func:`member_rows`: all of them, a seeded
  bootstrap resample, or a disjoint part), seed ``seed + i``; the policy's reward is their pessimistic
  aggregate (:class:`EnsembleRewardScorer`, :func:`prefopt.judge.ensemble.combine_scores`: ``mean_minus_std``,
  ``min`` or ``mean``). Each member's held-out pair accuracy and the aggregate's are recorded.
* ``policy.length_penalty`` — α × completion tokens subtracted from the reward
  (:class:`LengthPenalisedReward`: :func:`prefopt.judge.length.length_penalised`, the online judge's penalty).
* ``policy.kl_budget`` — training stops at the first step whose sampled KL to the reference (nats per
  completion, ``rlhf/kl``: :class:`SequenceKLCallback`) passes it: the health monitor's ``kl_high`` stop,
  with RLOO/GRPO logging every step so the check runs at every step.

A point with defences is named ``rlhf-ens4-lp0.1-kl2-beta0.01-seed42``, has ``variant: rlhf-ens4-...`` and
the defences in ``params``, so compare's table and frontier show it apart from plain RLHF.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from transformers import TrainerCallback

from prefopt.config.algorithms import DPO, REWARD, get_spec
from prefopt.config.recipe import load_recipe
from prefopt.config.schema import StrictModel, validate
from prefopt.core.errors import PrefoptError
from prefopt.data.tokenization import encode_prompt
from prefopt.data.tokenized import TokenizedCache
from prefopt.judge.ensemble import combine_scores
from prefopt.judge.length import length_penalised
from prefopt.judge.scorers import RewardModelScorer
from prefopt.model.loading import load_model, load_tokenizer
from prefopt.studies.measure import Measure, WorldEvaluator, world_task
from prefopt.training.algorithms import get_adapter
from prefopt.training.build import build_trainer, save_model, starting_checkpoint
from prefopt.training.callbacks import MetricsJsonlCallback
from prefopt.training.fit import fit
from prefopt.training.health import RLHF_KL, HealthCallback
from prefopt.world import TrueReward

log = logging.getLogger("prefopt")

_Strict = StrictModel


class RewardEnsembleSection(_Strict):
    """``reward_model.ensemble``: N reward models, each trained like the single one on its own rows of the
    paired training data (all of them with ``split: full``), combined pessimistically into the policy's
    reward (Coste et al. 2024)."""

    members: int = Field(4, ge=2, description="Number of reward models (at least 2).")
    split: Literal["full", "bootstrap", "disjoint"] = Field(
        "full",
        description="'full': every member on all the training pairs, the members differing only in their "
        "seed (head initialisation and data order), as in Coste et al. 2024 and deep ensembles; "
        "'bootstrap': each member a seeded resample (with replacement) of all the pairs, as many as there "
        "are (about 63 % of them distinct); 'disjoint': the shuffled pairs dealt into N disjoint parts.",
    )
    combine: Literal["mean_minus_std", "min", "mean"] = Field(
        "mean_minus_std",
        description="How the members' scores combine (prefopt.judge.ensemble.combine_scores).",
    )
    k: float = Field(1.0, ge=0, description="mean_minus_std: the multiple of the members' std subtracted.")
    normalize: bool = Field(
        True,
        description="Standardise each member's scores (mean 0, std 1 over the training pairs' replies) "
        "before combining: a Bradley-Terry reward has an arbitrary offset and scale per model, so raw "
        "scores make mean − k·std measure the members' offsets rather than their disagreement.",
    )


class RewardModelSection(_Strict):
    init: Literal["reference", "builtin"] = Field(
        "reference",
        description="'reference': the world reference's trunk + a new scalar head; 'builtin': fresh.",
    )
    learning_rate: float = Field(1e-3, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs.")
    per_device_train_batch_size: int = Field(32, gt=0)
    center_rewards_coefficient: float | None = Field(
        0.01, description="TRL's reward-centering term (None = off)."
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="More trl.RewardConfig fields, verbatim.")
    ensemble: RewardEnsembleSection | None = Field(
        None, description="Train N reward models and reward the policy with their pessimistic aggregate."
    )


class PolicySection(_Strict):
    trainer: Literal["rloo", "grpo"] = "rloo"
    beta: float | list[float] = Field(
        0.05, description="KL coefficient; a list gives one policy (and point) each."
    )
    learning_rate: float = Field(3e-4, gt=0)
    max_steps: int = Field(150, gt=0)
    per_device_train_batch_size: int = Field(
        32, gt=0, description="Completions per step (prompts × generations)."
    )
    num_generations: int = Field(4, ge=2)
    max_completion_length: int = Field(8, gt=0)
    temperature: float = Field(1.0, gt=0)
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_steps: int = 5
    length_penalty: float = Field(
        0.0,
        ge=0,
        description="α: the reward minus α per completion token (the same count as online.length_penalty).",
    )
    kl_budget: float | None = Field(
        None,
        gt=0,
        description="Stop the policy's training at the first step whose sampled KL to the reference "
        "(nats per completion) passes this; checked every step (health kl_high).",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="More trl.RLOOConfig / GRPOConfig fields."
    )


class RLHFSection(_Strict):
    """``rlhf:`` in a sweep (or a standalone config for :func:`run_rlhf`)."""

    base: str | None = Field(
        None,
        description="World DPO recipe for model + data (relative to the sweep file); "
        "default: the sweep's base or its first DPO entry's.",
    )
    reward_model: RewardModelSection = Field(default_factory=RewardModelSection)
    policy: PolicySection = Field(default_factory=PolicySection)
    log_true_reward: bool = Field(
        True, description="Log the true reward (weight 0) while training the policy."
    )
    max_prompts: int | None = Field(None, gt=0, description="Cap on the number of training prompts.")


# --------------------------------------------------------------------------------------------- stages


def reward_recipe(section: RewardModelSection, recipe, seed: int):
    """The base recipe as ``algorithm: reward``: the same model (``init: builtin``: a fresh builtin model),
    data, seed and ``max_length``, the reward model's settings from ``section``, no LoRA, no evaluation —
    trained by the same adapter, trainer and lifecycle as ``prefopt train`` with that recipe."""
    data = recipe.to_dict()
    model = dict(data["model"], lora=None, quantization=None)
    name = model["name"]
    if section.init == "builtin" and not name.startswith("builtin:"):
        model.update(name="builtin:tiny-arith", tokenizer=None)
    training = {
        "learning_rate": section.learning_rate,
        "num_train_epochs": section.num_train_epochs,
        "max_steps": section.max_steps,
        "per_device_train_batch_size": section.per_device_train_batch_size,
        "save_strategy": "no",
        "logging_steps": 10,
        **{k: recipe.training[k] for k in ("max_length", "max_prompt_length") if k in recipe.training},
        **section.extra,
    }
    data.update(
        algorithm=REWARD,
        model=model,
        loss={"center_rewards_coefficient": section.center_rewards_coefficient},
        training=training,
        seed=seed,
        evaluation={"enabled": False},
    )
    out = load_recipe(data=data)
    out._source_path = recipe.source_path
    return out


def train_reward_model(
    section: RewardModelSection,
    recipe,
    tokenizer,
    paired_tok,
    run_dir: Path,
    seed: int,
    name: str = "reward_model",
):
    """The reward model on the base recipe's tokenised pairs, through ``algorithm: reward``
    (:func:`reward_recipe`; :class:`prefopt.training.trainers.PrefoptRewardTrainer`, :func:`fit`), saved
    to ``<run>/<name>`` (loadable as a ``type: reward_model`` judge)."""
    rm_recipe = reward_recipe(section, recipe, seed)
    model, _ = load_model(
        rm_recipe.model, seed=seed, tokenizer=tokenizer, num_labels=get_spec(REWARD).num_labels
    )
    ckpt = str(
        run_dir / ("rm-checkpoints" + name.removeprefix("reward_model"))
    )  # ensemble: rm-checkpoints_<i>
    config = get_adapter(REWARD).trl_config(rm_recipe, output_dir=ckpt)
    metrics = MetricsJsonlCallback(run_dir / f"{name}_metrics.jsonl")
    trainer = build_trainer(
        rm_recipe, model, tokenizer, paired_tok, None, output_dir=ckpt, callbacks=[metrics], config=config
    )
    result = fit(trainer, metrics_writer=metrics.write)
    info = {"global_step": result.global_step, "train_loss": result.train_loss}
    if not result.finished:  # a failed reward model is not saved (and no policy is trained on it)
        return None, {**info, "status": result.status, "error": result.error, "nonfinite": result.record()}
    save_model(trainer, tokenizer, run_dir / name)
    return result.model.eval(), info


def member_rows(n_rows: int, members: int, split: str, seed: int) -> list[list[int]]:
    """The training-row indices of each ensemble member.

    ``bootstrap``: member i draws ``n_rows`` rows with replacement, from ``random.Random(f"bootstrap:{seed}:{i}")``
    (reproducible per seed and member); ``disjoint``: the rows shuffled with ``random.Random(f"disjoint:{seed}")``
    and dealt round-robin, so every row is in exactly one member (sizes differ by at most one); ``full``:
    every member all the rows (the members then differ only in their seed, ``seed + i``)."""
    if members < 2:
        raise ValueError("an ensemble needs at least 2 members")
    if split == "full":
        return [list(range(n_rows)) for _ in range(members)]
    if n_rows < members:
        raise PrefoptError(
            f"{n_rows} training pairs cannot be split into {members} reward models.",
            where="rlhf.reward_model.ensemble.members",
            fix="use fewer members or more training pairs (data.train.*.size).",
        )
    if split == "disjoint":
        order = list(range(n_rows))
        random.Random(f"disjoint:{seed}").shuffle(order)
        return [sorted(order[i::members]) for i in range(members)]
    if split == "bootstrap":
        return [
            sorted(random.Random(f"bootstrap:{seed}:{i}").choices(range(n_rows), k=n_rows))
            for i in range(members)
        ]
    raise ValueError(f"unknown split {split!r}")


def standardisation(scores: list[float]) -> tuple[float, float]:
    """(mean, population std) of a member's scores on the calibration replies; std 1 when they are all equal."""
    t = torch.tensor(scores, dtype=torch.float64)
    sd = float(t.std(unbiased=False)) if len(scores) > 1 else 0.0
    return float(t.mean()), (sd if sd > 0 else 1.0)


def calibration_sequences(paired_tok, n: int = 1024, seed: int = 0) -> list[list[int]]:
    """Up to ``n`` training pairs' chosen and rejected sequences (prompt + reply ids, as the reward model
    scores them), a seeded sample: the replies on which each member's scores are standardised."""
    idx = list(range(len(paired_tok)))
    random.Random(f"calibration:{seed}").shuffle(idx)
    rows = paired_tok.select(sorted(idx[:n]))
    return [
        list(p) + list(r)
        for p, c, rj in zip(rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"])
        for r in (c, rj)
    ]


class EnsembleRewardScorer:
    """N reward-model scorers combined per completion by :func:`prefopt.judge.ensemble.combine_scores`
    (``mean_minus_std`` / ``min`` / ``mean``); called by TRL like :class:`RewardModelScorer`."""

    __name__ = "reward_model"

    def __init__(
        self,
        scorers: list,
        combine: str = "mean_minus_std",
        k: float = 1.0,
        calibration: list[list[int]] | None = None,
    ):
        if len(scorers) < 2:
            raise ValueError("an ensemble needs at least 2 scorers")
        self.scorers, self.combine, self.k = list(scorers), combine, float(k)
        # each member's affine standardisation (mean, std over ``calibration``); None: raw scores
        self.standardise: list[tuple[float, float]] | None = None
        if calibration:
            self.standardise = [standardisation(s.score_ids(calibration)) for s in self.scorers]

    def combined(self, per_member: list[list[float]]) -> list[float]:
        if self.standardise is not None:
            per_member = [[(x - mu) / sd for x in m] for m, (mu, sd) in zip(per_member, self.standardise)]
        return [
            combine_scores([m[i] for m in per_member], self.combine, k=self.k)
            for i in range(len(per_member[0]))
        ]

    def score_ids(self, sequences: list[list[int]]) -> list[float]:
        return self.combined([s.score_ids(sequences) for s in self.scorers])

    def score_text(self, prompts: list[str], completions: list[str]) -> list[float]:
        # the members share the policy's tokenizer: tokenise once, score the same ids with each
        return self.score_ids(self.scorers[0].text_sequences(prompts, completions))

    def __call__(self, prompts=None, completions=None, completion_ids=None, **_):
        if isinstance(prompts, str):
            return self.score_text([prompts], [completions])[0]
        if completion_ids is None:
            return self.score_text(prompts, completions)
        return self.score_ids(self.scorers[0].sequences(prompts, completion_ids))


class LengthPenalisedReward:
    """``reward − α · tokens(completion)``: :func:`prefopt.judge.length.length_penalised`, the penalty of
    ``online.length_penalty`` (the decoded reply's tokens, no special tokens)."""

    def __init__(self, reward, alpha: float, tokenizer):
        if alpha < 0:
            raise ValueError("alpha must be >= 0")
        self.reward, self.alpha, self.tokenizer = reward, float(alpha), tokenizer
        self.__name__ = getattr(reward, "__name__", "reward_model")

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kw):
        base = self.reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kw)
        return length_penalised(base, completions, self.alpha, self.tokenizer)


def train_reward_models(
    section: RewardModelSection, recipe, tokenizer, paired_tok, run_dir: Path, seed: int, heldout
):
    """The policy's reward: one reward model, or ``section.ensemble.members`` of them (member i on
    :func:`member_rows`'s rows i, seed ``seed + i``, saved to ``<run>/reward_model_<i>``) combined by
    :class:`EnsembleRewardScorer`. Returns ``(scorer or None, info)``; info has the held-out pair accuracy
    (of the aggregate for an ensemble, with each member's under ``members``)."""
    ens = section.ensemble
    if ens is None:
        rm, info = train_reward_model(section, recipe, tokenizer, paired_tok, run_dir, seed)
        if rm is None:
            return None, info
        scorer = RewardModelScorer(rm, tokenizer)
        info["heldout_accuracy"] = reward_model_accuracy(scorer, heldout)
        return scorer, info
    rows = member_rows(len(paired_tok), ens.members, ens.split, seed)
    members, scorers = [], []
    for i, idx in enumerate(rows):
        rm, minfo = train_reward_model(
            section, recipe, tokenizer, paired_tok.select(idx), run_dir, seed + i, name=f"reward_model_{i}"
        )
        minfo.update(member=i, seed=seed + i, train_pairs=len(idx), distinct_pairs=len(set(idx)))
        members.append(minfo)
        if rm is None:
            return None, {
                "ensemble": ens.model_dump(),
                "members": members,
                "error": f"member {i}: {minfo['error']}",
                "nonfinite": minfo.get("nonfinite"),
                "status": minfo.get("status"),
            }
        scorers.append(RewardModelScorer(rm, tokenizer))
    calibration = calibration_sequences(paired_tok, seed=seed) if ens.normalize else None
    scorer = EnsembleRewardScorer(scorers, ens.combine, ens.k, calibration=calibration)
    # each member scores the held-out replies once; its accuracy and the aggregate's come from those scores
    accuracy = ensemble_accuracies(scorer, heldout)
    for minfo, acc in zip(members, accuracy["members"]):
        minfo["heldout_accuracy"] = acc
    info = {
        "ensemble": ens.model_dump(),
        "members": members,
        "global_step": sum(m["global_step"] for m in members),
        "heldout_accuracy": accuracy["aggregate"],
        "member_heldout_accuracy": [m["heldout_accuracy"] for m in members],
        "standardisation": None
        if scorer.standardise is None
        else [{"mean": round(mu, 4), "std": round(sd, 4)} for mu, sd in scorer.standardise],
    }
    return scorer, info


def _pair_accuracy(chosen: list[float], rejected: list[float]) -> float:
    return float((torch.tensor(chosen) > torch.tensor(rejected)).double().mean())


def reward_model_accuracy(scorer: RewardModelScorer, pairs: list[dict]) -> float | None:
    """Fraction of held-out pairs the reward model ranks right."""
    if not pairs:
        return None
    prompts = [r["prompt"] for r in pairs]
    return _pair_accuracy(
        scorer.score_text(prompts, [r["chosen"] for r in pairs]),
        scorer.score_text(prompts, [r["rejected"] for r in pairs]),
    )


def ensemble_accuracies(scorer: EnsembleRewardScorer, pairs: list[dict]) -> dict:
    """``{"members": [each member's held-out pair accuracy], "aggregate": the combined score's}``, from one
    scoring of the held-out chosen and rejected replies by each member (None without pairs)."""
    if not pairs:
        return {"members": [None] * len(scorer.scorers), "aggregate": None}
    prompts = [r["prompt"] for r in pairs]
    ids = {
        side: scorer.scorers[0].text_sequences(prompts, [r[side] for r in pairs])
        for side in ("chosen", "rejected")
    }
    per = {side: [s.score_ids(seqs) for s in scorer.scorers] for side, seqs in ids.items()}
    return {
        "members": [_pair_accuracy(c, r) for c, r in zip(per["chosen"], per["rejected"])],
        "aggregate": _pair_accuracy(scorer.combined(per["chosen"]), scorer.combined(per["rejected"])),
    }


def check_prompt_tokenisation(trainer, tokenizer, prompts: list[str]) -> None:
    """TRL's generation must start from exactly the ids prefopt trains and evaluates on."""

    theirs = trainer._tokenize_prompts(list(prompts))[0]
    ours = [encode_prompt(tokenizer, p) for p in prompts]
    if [list(t) for t in theirs] != ours:
        raise RuntimeError(f"TRL tokenises prompts differently from prefopt: {theirs[:2]} vs {ours[:2]}")


def train_policy(
    section: PolicySection,
    beta: float,
    recipe,
    reward_scorer,
    task: str,
    prompts: list[str],
    run_dir: Path,
    seed: int,
    log_true_reward: bool = True,
):
    from datasets import Dataset

    if section.trainer == "rloo":
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    policy, tokenizer = load_model(recipe.model, seed=seed)
    ref_path = starting_checkpoint(recipe, run_dir, policy)
    if section.length_penalty > 0:
        reward_scorer = LengthPenalisedReward(reward_scorer, section.length_penalty, tokenizer)
    funcs: list[Callable] = [reward_scorer]
    weights = [1.0]
    if log_true_reward:
        funcs.append(TrueReward(task))
        weights.append(0.0)
    cfg = Config(
        output_dir=str(run_dir / "checkpoints"),
        beta=beta,
        learning_rate=section.learning_rate,
        max_steps=section.max_steps,
        per_device_train_batch_size=section.per_device_train_batch_size,
        num_generations=section.num_generations,
        max_completion_length=section.max_completion_length,
        temperature=section.temperature,
        lr_scheduler_type=section.lr_scheduler_type,
        warmup_steps=section.warmup_steps,
        reward_weights=weights,
        use_vllm=False,
        seed=seed,
        data_seed=seed,
        report_to="none",
        save_strategy="no",
        logging_steps=1 if section.kl_budget is not None else 10,  # the budget is checked at every step
        activation_checkpointing=False,
        bf16=False,
        dataloader_num_workers=0,
        **section.extra,
    )
    metrics = MetricsJsonlCallback(run_dir / "metrics.jsonl")
    callbacks: list = [SequenceKLCallback(), metrics]
    health = None
    if section.kl_budget is not None:
        health = kl_budget_callback(section.kl_budget, metrics.write, seed)
        callbacks.append(health)
    trainer = Trainer(
        model=policy,
        reward_funcs=funcs,
        args=cfg,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    check_prompt_tokenisation(trainer, tokenizer, prompts[:64])
    ref_model = getattr(trainer, "ref_model", None)
    ref_from = getattr(getattr(ref_model, "config", None), "_name_or_path", None)
    result = fit(trainer, metrics_writer=metrics.write)
    info = {
        "trainer": f"{type(trainer).__module__}.{type(trainer).__qualname__}",
        "global_step": result.global_step,
        "train_loss": result.train_loss,
        "reference_checkpoint": ref_from or ref_path,
    }
    if health is not None:
        info["kl_budget"] = kl_budget_record(section.kl_budget, health, result.global_step)
    return result, tokenizer, info


class SequenceKLCallback(TrainerCallback):
    """Adds ``rlhf/kl`` (nats per completion) to each log of RLOO/GRPO: TRL logs ``kl`` as the mean per
    completion *token* (Σ per-token log-ratio / Σ completion tokens), so × ``completions/mean_length`` (the
    same tokens, without ``mask_truncated_completions``) is the mean per completion, the unit of the
    compare table's KL and of ``online.kl_budget``. Registered before the metrics writer and the health
    callback, which see the added key."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "kl" in logs and "completions/mean_length" in logs:
            logs[RLHF_KL] = float(logs["kl"]) * float(logs["completions/mean_length"])


def kl_budget_callback(budget: float, metrics_writer, seed: int) -> HealthCallback:
    """The health monitor with only the KL check armed as a stop: ``kl_high`` above ``budget`` on
    ``rlhf/kl`` (plus the default ``nonfinite`` stop)."""
    return HealthCallback(
        None, metrics_writer=metrics_writer, kl_max=budget, stop_on=["nonfinite", "kl_high"], seed=seed
    )


def kl_budget_record(budget: float, health: HealthCallback, global_step: int) -> dict:
    """What the point records about its KL budget: whether it stopped training, at which step and KL."""
    stop = next((r for r in health.fired if r["warning"] == "kl_high"), None)
    return {
        "budget": budget,
        "stopped": stop is not None,
        "stopped_at_step": stop["step"] if stop else None,
        "kl_at_stop": stop["kl"] if stop else None,
        "global_step": global_step,
    }


# --------------------------------------------------------------------------------------------- entry point
def run_rlhf(
    section: RLHFSection | dict,
    base_recipe,
    *,
    output_dir: str | Path,
    seed: int | None = None,
    evaluate: Callable | None = None,
    data_cache=None,
) -> dict:
    """Reward model, then one policy per ``policy.beta``; each policy is evaluated like the DPO points.

    ``base_recipe`` is a world recipe (a :class:`prefopt.config.recipe.Recipe`; its algorithm's data kind is
    used only to find the paired data — any algorithm works, its loss is ignored). Returns
    ``{"reward_model": {...}, "points": [...]}``; each point has ``algorithm: rlhf``, ``params:
    {beta}``, ``eval`` (the ``evaluate`` result, default :class:`prefopt.studies.measure.WorldEvaluator`),
    timings and peak memory."""

    if isinstance(section, dict):
        section = validate(RLHFSection, section, "rlhf")
    seed = base_recipe.seed if seed is None else seed
    run_dir = Path(output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task = world_task(base_recipe)
    # the same paired data as the DPO points: the base recipe as DPO, same data section and seed
    data = base_recipe.to_dict()
    data.update(algorithm=DPO, loss={}, seed=seed)
    recipe = load_recipe(data=data)
    recipe._source_path = base_recipe.source_path
    tokenizer = load_tokenizer(recipe.model.tokenizer or recipe.model.name)
    if data_cache is None:
        data_cache = TokenizedCache()
    if evaluate is None:
        evaluate = WorldEvaluator.for_task(task)
    t0 = time.perf_counter()
    with Measure() as m_rm:
        train_tok, _eval_tok, train_ds, _, _report = data_cache.get(recipe, tokenizer)
        scorer, rm_info = train_reward_models(
            section.reward_model, recipe, tokenizer, train_tok, run_dir, seed, getattr(evaluate, "pairs", [])
        )
        rm_info["train_pairs"] = len(train_tok)
    betas = section.policy.beta if isinstance(section.policy.beta, list) else [section.policy.beta]
    tag, defences = defence_label(section)
    if scorer is None:  # the reward model's loss turned non-finite: every policy of this study fails with it
        log.warning("rlhf: reward model %s; no policy is trained", rm_info["error"])
        rm_info.update(m_rm.result)
        points = [
            _failed_point(beta, seed, run_dir / f"beta{beta:g}", rm_info, "reward model: ", tag, defences)
            for beta in betas
        ]
        return {"reward_model": rm_info, "points": points, "wall_s": round(time.perf_counter() - t0, 2)}
    log.info(
        "rlhf: reward model%s trained (%d steps), held-out pair accuracy %s, %.0fs",
        f" ensemble of {section.reward_model.ensemble.members}" if section.reward_model.ensemble else "",
        rm_info["global_step"],
        rm_info["heldout_accuracy"],
        m_rm.result["wall_s"],
    )
    rm_info.update(m_rm.result)
    prompts = list(dict.fromkeys(train_ds["prompt"]))
    if section.max_prompts:
        prompts = prompts[: section.max_prompts]
    points = []
    for beta in betas:
        pdir = run_dir / f"beta{beta:g}"
        pdir.mkdir(parents=True, exist_ok=True)
        with Measure() as m:
            result, tok, info = train_policy(
                section.policy, beta, recipe, scorer, task, prompts, pdir, seed, section.log_true_reward
            )
            if not result.finished:  # stopped on a non-finite loss: neither measured nor kept
                points.append(
                    _failed_point(
                        beta,
                        seed,
                        pdir,
                        rm_info,
                        "",
                        tag,
                        defences,
                        info=info,
                        record=result.record(),
                        error=result.error,
                    )
                )
                continue
            policy = result.model.eval()
            t_train = m_rm.result["wall_s"]  # the shared reward model is part of every RLHF point's cost
            evaluation = evaluate(policy)
        point = {
            "name": f"rlhf{tag}-beta{beta:g}-seed{seed}",
            "algorithm": "rlhf",
            "variant": f"rlhf{tag}" if tag else None,
            "params": {"beta": beta, **defences},
            "defences": defences,
            "seed": seed,
            "status": "finished",
            "run_dir": str(pdir),
            **info,
            "train_rows": len(prompts),
            "train_s": round(m.result["wall_s"] - evaluation.get("eval_s", 0.0) + t_train, 2),
            "wall_s": round(m.result["wall_s"] + m_rm.result["wall_s"], 2),
            "cpu_s": round(m.result["cpu_s"] + m_rm.result["cpu_s"], 2),
            "peak_rss_mb": max(m.result["peak_rss_mb"], m_rm.result["peak_rss_mb"]),
            "peak_rss_delta_mb": max(m.result["peak_rss_delta_mb"], m_rm.result["peak_rss_delta_mb"]),
            "reward_model": rm_info,
            "eval": evaluation,
        }
        points.append(point)
        del policy, result
    return {"reward_model": rm_info, "points": points, "wall_s": round(time.perf_counter() - t0, 2)}


def defence_label(section: RLHFSection) -> tuple[str, dict]:
    """The defences a section turns on: a name tag (``-ens4``, ``-lp0.1``, ``-kl2``; "" for none) and the
    params the point records (``ensemble: "4 full mean_minus_std k=1"``, ``length_penalty``,
    ``kl_budget``), so the compare table and frontier tell defended RLHF from plain RLHF."""
    tag, params = "", {}
    ens = section.reward_model.ensemble
    if ens is not None:
        tag += f"-ens{ens.members}"
        k = f" k={ens.k:g}" if ens.combine == "mean_minus_std" else ""
        params["ensemble"] = f"{ens.members} {ens.split} {ens.combine}{k}"
    if section.policy.length_penalty > 0:
        tag += f"-lp{section.policy.length_penalty:g}"
        params["length_penalty"] = section.policy.length_penalty
    if section.policy.kl_budget is not None:
        tag += f"-kl{section.policy.kl_budget:g}"
        params["kl_budget"] = section.policy.kl_budget
    return tag, params


def _failed_point(
    beta,
    seed: int,
    pdir: Path,
    rm_info: dict,
    prefix: str,
    tag: str = "",
    defences: dict | None = None,
    *,
    info=None,
    record=None,
    error=None,
) -> dict:
    """The point of a policy that did not finish (its own non-finite loss, or its reward model's)."""
    defences = defences or {}
    return {
        "name": f"rlhf{tag}-beta{beta:g}-seed{seed}",
        "algorithm": "rlhf",
        "variant": f"rlhf{tag}" if tag else None,
        "params": {"beta": beta, **defences},
        "defences": defences,
        "seed": seed,
        "status": "failed",
        "error": prefix + (error or rm_info.get("error") or "failed"),
        "nonfinite": record if record is not None else rm_info.get("nonfinite"),
        "run_dir": str(pdir),
        **(info or {}),
        "reward_model": rm_info,
        "eval": None,
    }
