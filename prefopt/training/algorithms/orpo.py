"""ORPO (Hong et al. 2024) → ``trl.experimental.orpo.ORPOTrainer`` (TRL's ``beta`` is λ). No reference."""

from prefopt.training.algorithms import Adapter, register


@register
class ORPOAdapter(Adapter):
    name = "orpo"
    data_kind = "paired"
    uses_reference = False
    trl_trainer = "trl.experimental.orpo.ORPOTrainer"
    paper = "Hong et al. 2024, arXiv:2403.07691"

    @classmethod
    def config_class(cls):
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig

    @classmethod
    def trainer_class(cls, recipe):
        from prefopt.training.trainers import PrefoptORPOTrainer

        return PrefoptORPOTrainer

    @classmethod
    def loss_kwargs(cls, recipe):
        return {"beta": recipe.loss_params.lam}

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
