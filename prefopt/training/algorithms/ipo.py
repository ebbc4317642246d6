"""IPO (Azar et al. 2023) → ``trl.DPOTrainer`` with ``loss_type="ipo"`` (TRL's ``beta`` is τ).

Default ``length_normalize: true`` is TRL's averaged form (used as is); ``false`` is the summed form of
the paper's reference code, computed by prefopt's trainer subclass with :func:`prefopt.training.losses.ipo_loss`.
"""

from prefopt.training.algorithms import Adapter, register


@register
class IPOAdapter(Adapter):
    name = "ipo"
    data_kind = "paired"
    uses_reference = True
    trl_trainer = "trl.DPOTrainer"
    paper = "Azar et al. 2023, arXiv:2310.12036"

    @classmethod
    def config_class(cls):
        from trl import DPOConfig

        return DPOConfig

    @classmethod
    def trainer_class(cls, recipe):
        from prefopt.training.trainers import PrefoptDPOTrainer

        return PrefoptDPOTrainer

    @classmethod
    def loss_kwargs(cls, recipe):
        return {"loss_type": ["ipo"], "beta": recipe.loss_params.tau}

    @classmethod
    def overrides(cls, recipe):
        out = super().overrides(recipe)
        if not recipe.loss_params.length_normalize:
            out.append(
                "loss: summed IPO via prefopt.training.losses.ipo_loss(length_normalize=False) (TRL averages)"
            )
        return out
