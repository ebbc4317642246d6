"""ORPO (Hong et al. 2024) → ``trl.experimental.orpo.ORPOTrainer`` (TRL's ``beta`` is λ). No reference."""

from prefopt.config.algorithms import ALGORITHMS
from prefopt.training import losses
from prefopt.training.algorithms.base import Adapter, register
from prefopt.training.trainers import PrefoptORPOTrainer


@register
class ORPOAdapter(Adapter):
    spec = ALGORITHMS["orpo"]
    trainer = PrefoptORPOTrainer
    reference_loss = staticmethod(losses.orpo_loss)

    @classmethod
    def loss_kwargs(cls, recipe):
        return {"beta": recipe.loss_params.lam}

    @classmethod
    def trainer_kwargs(cls, recipe):
        return {"nll_on_prompt": recipe.loss_params.nll_on_prompt}

    @classmethod
    def overrides(cls, recipe):
        out = super().overrides(recipe) + [
            "tokenisation: no BOS prepended (TRL's ORPO adds one; SFT/DPO do not)"
        ]
        if not recipe.loss_params.nll_on_prompt:
            out.append(
                "loss: NLL term over the chosen completion, mean per example (paper Eq. 2); TRL's covers the prompt too"
            )
        return out
