"""Reward model (Bradley-Terry) → ``trl.RewardTrainer``: a sequence classifier with one logit trained on
pairs, −log σ(r(x, y_w) − r(x, y_l) − m) (+ η·E[(r_w + r_l)²] with ``loss.center_rewards_coefficient``).

The model is the recipe's ``model:`` loaded as ``AutoModelForSequenceClassification`` with
``num_labels=1`` (:func:`prefopt.model.loading.load_model` with ``num_labels``): the checkpoint's trunk
and a new linear head ``score``, initialised from the recipe seed; under ``lora:`` PEFT's ``SEQ_CLS``
task type trains the head in full (``modules_to_save``). Each sequence is prefopt's
``prompt_ids + completion_ids``, EOS included; the head reads the last non-pad token (the EOS). The
saved ``model/`` loads as a ``type: reward_model`` judge. ``loss.margin: true`` passes TRL's ``margin``
column, score_chosen − score_rejected (Llama 2, Eq. 2): every training pair then needs both scores.
"""

from __future__ import annotations

import math

from prefopt.config.algorithms import ALGORITHMS
from prefopt.core.errors import PrefoptError
from prefopt.training import losses
from prefopt.training.algorithms.base import Adapter, register
from prefopt.training.trainers import PrefoptRewardTrainer

SCORES = ("score_chosen", "score_rejected")


@register
class RewardAdapter(Adapter):
    spec = ALGORITHMS["reward"]
    trainer = PrefoptRewardTrainer
    reference_loss = staticmethod(losses.bradley_terry_loss)

    @classmethod
    def loss_kwargs(cls, recipe):
        return {"center_rewards_coefficient": recipe.loss_params.center_rewards_coefficient}

    @classmethod
    def trainer_kwargs(cls, recipe):
        return {"margin": recipe.loss_params.margin}

    @classmethod
    def extra_columns(cls, recipe) -> tuple[str, ...]:
        return SCORES if recipe.loss_params.margin else ()

    @classmethod
    def overrides(cls, recipe):
        out = super().overrides(recipe) + [
            "model: AutoModelForSequenceClassification (num_labels=1) on model.name's trunk, a new head "
            "initialised from the recipe seed; sequences are prompt + reply + EOS, scored at the EOS",
            "data: TRL's max_length filter is skipped (prefopt's tokenisation applied training.max_length "
            "and counted what it truncated)",
        ]
        if recipe.loss_params.margin:
            out.append("loss: margin m = score_chosen − score_rejected per pair (TRL's margin column)")
        return out

    @classmethod
    def depends_on_data(cls, recipe):
        return bool(recipe.loss_params.margin)

    @classmethod
    def settle_on_data(cls, recipe, train_ds):
        """With ``loss.margin``: every training pair must carry both scores (the margin is their
        difference); the first pair without them is an error naming the row, before any model loads."""
        if recipe.training.get("prefix_sharing") is True:
            raise PrefoptError(
                "training.prefix_sharing: true has no effect on a reward model: each sequence is scored "
                "whole by the classifier.",
                where="training.prefix_sharing",
                fix="remove training.prefix_sharing.",
            )
        if not recipe.loss_params.margin:
            return recipe, None
        missing = [c for c in SCORES if c not in train_ds.column_names]
        if not missing:
            for i, (sc, sr) in enumerate(zip(train_ds["score_chosen"], train_ds["score_rejected"])):
                if not _finite(sc) or not _finite(sr):
                    missing = [f"row {i}: score_chosen = {sc!r}, score_rejected = {sr!r}"]
                    break
        if missing:
            raise PrefoptError(
                "loss.margin: true takes each pair's margin from its scores (score_chosen − score_rejected), "
                f"but the training data has none ({'; '.join(missing)}).",
                where="loss.margin",
                fix="use data whose pairs all carry score_chosen and score_rejected (e.g. UltraFeedback's "
                "ratings, or data.min_score_margin to keep only scored pairs), or set loss.margin: false.",
            )
        margins = [float(c) - float(r) for c, r in zip(train_ds["score_chosen"], train_ds["score_rejected"])]
        info = {
            "margin_mean": round(sum(margins) / len(margins), 6),
            "margin_min": min(margins),
            "margin_max": max(margins),
            "source": "score_chosen − score_rejected",
        }
        return recipe, info


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
