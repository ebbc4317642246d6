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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from prefopt.config.algorithms import DPO, REWARD, get_spec
from prefopt.config.recipe import load_recipe
from prefopt.config.schema import StrictModel, validate
from prefopt.data.tokenization import encode_prompt
from prefopt.data.tokenized import TokenizedCache
from prefopt.judge.scorers import RewardModelScorer
from prefopt.model.loading import load_model, load_tokenizer
from prefopt.studies.measure import Measure, WorldEvaluator, world_task
from prefopt.training.algorithms import get_adapter
from prefopt.training.build import build_trainer, save_model, starting_checkpoint
from prefopt.training.callbacks import MetricsJsonlCallback
from prefopt.training.fit import fit
from prefopt.world import TrueReward

log = logging.getLogger("prefopt")

_Strict = StrictModel


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


def train_reward_model(section: RewardModelSection, recipe, tokenizer, paired_tok, run_dir: Path, seed: int):
    """The reward model on the base recipe's tokenised pairs, through ``algorithm: reward``
    (:func:`reward_recipe`; :class:`prefopt.training.trainers.PrefoptRewardTrainer`, :func:`fit`), saved
    to ``<run>/reward_model`` (loadable as a ``type: reward_model`` judge)."""
    rm_recipe = reward_recipe(section, recipe, seed)
    model, _ = load_model(
        rm_recipe.model, seed=seed, tokenizer=tokenizer, num_labels=get_spec(REWARD).num_labels
    )
    config = get_adapter(REWARD).trl_config(rm_recipe, output_dir=str(run_dir / "rm-checkpoints"))
    metrics = MetricsJsonlCallback(run_dir / "reward_model_metrics.jsonl")
    trainer = build_trainer(
        rm_recipe,
        model,
        tokenizer,
        paired_tok,
        None,
        output_dir=str(run_dir / "rm-checkpoints"),
        callbacks=[metrics],
        config=config,
    )
    result = fit(trainer, metrics_writer=metrics.write)
    info = {"global_step": result.global_step, "train_loss": result.train_loss}
    if not result.finished:  # a failed reward model is not saved (and no policy is trained on it)
        return None, {**info, "status": result.status, "error": result.error, "nonfinite": result.record()}
    save_model(trainer, tokenizer, run_dir / "reward_model")
    return result.model.eval(), info


def reward_model_accuracy(scorer: RewardModelScorer, pairs: list[dict]) -> float | None:
    """Fraction of held-out pairs the reward model ranks right."""
    if not pairs:
        return None
    prompts = [r["prompt"] for r in pairs]
    rc = torch.tensor(scorer.score_text(prompts, [r["chosen"] for r in pairs]))
    rr = torch.tensor(scorer.score_text(prompts, [r["rejected"] for r in pairs]))
    return float((rc > rr).double().mean())


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
        logging_steps=10,
        activation_checkpointing=False,
        bf16=False,
        dataloader_num_workers=0,
        **section.extra,
    )
    metrics = MetricsJsonlCallback(run_dir / "metrics.jsonl")
    trainer = Trainer(
        model=policy,
        reward_funcs=funcs,
        args=cfg,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=[metrics],
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
    return result, tokenizer, info


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
        rm, rm_info = train_reward_model(section.reward_model, recipe, tokenizer, train_tok, run_dir, seed)
        rm_info["train_pairs"] = len(train_tok)
        if rm is not None:
            scorer = RewardModelScorer(rm, tokenizer)
            rm_info["heldout_accuracy"] = reward_model_accuracy(scorer, getattr(evaluate, "pairs", []))
    betas = section.policy.beta if isinstance(section.policy.beta, list) else [section.policy.beta]
    if rm is None:  # the reward model's loss turned non-finite: every policy of this study fails with it
        log.warning("rlhf: reward model %s; no policy is trained", rm_info["error"])
        rm_info.update(m_rm.result)
        points = [
            _failed_point(beta, seed, run_dir / f"beta{beta:g}", rm_info, "reward model: ") for beta in betas
        ]
        return {"reward_model": rm_info, "points": points, "wall_s": round(time.perf_counter() - t0, 2)}
    log.info(
        "rlhf: reward model trained (%d steps), held-out pair accuracy %s, %.0fs",
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
                        beta, seed, pdir, rm_info, "", info=info, record=result.record(), error=result.error
                    )
                )
                continue
            policy = result.model.eval()
            t_train = m_rm.result["wall_s"]  # the shared reward model is part of every RLHF point's cost
            evaluation = evaluate(policy)
        point = {
            "name": f"rlhf-beta{beta:g}-seed{seed}",
            "algorithm": "rlhf",
            "params": {"beta": beta},
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


def _failed_point(
    beta, seed: int, pdir: Path, rm_info: dict, prefix: str, *, info=None, record=None, error=None
) -> dict:
    """The point of a policy that did not finish (its own non-finite loss, or its reward model's)."""
    return {
        "name": f"rlhf-beta{beta:g}-seed{seed}",
        "algorithm": "rlhf",
        "params": {"beta": beta},
        "seed": seed,
        "status": "failed",
        "error": prefix + (error or rm_info.get("error") or "failed"),
        "nonfinite": record if record is not None else rm_info.get("nonfinite"),
        "run_dir": str(pdir),
        **(info or {}),
        "reward_model": rm_info,
        "eval": None,
    }
