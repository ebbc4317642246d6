"""IPO (Azar et al. 2023) → ``trl.DPOTrainer`` with ``loss_type="ipo"`` (TRL's ``beta`` is τ).

Default ``length_normalize: true`` is TRL's averaged form (used as is); ``false`` is the summed form of
the paper's reference code, computed by prefopt's trainer subclass with
:func:`prefopt.training.losses.ipo_loss`.
"""

from prefopt.config.algorithms import ALGORITHMS
from prefopt.training import losses
from prefopt.training.algorithms.base import Adapter, register
from prefopt.training.trainers import PrefoptDPOTrainer


@register
class IPOAdapter(Adapter):
    spec = ALGORITHMS["ipo"]
    trainer = PrefoptDPOTrainer
    reference_loss = staticmethod(losses.ipo_loss)

    @classmethod
    def loss_kwargs(cls, recipe):
        return {"loss_type": ["ipo"], "beta": recipe.loss_params.tau}

    @classmethod
    def trainer_kwargs(cls, recipe):
        if recipe.loss_params.length_normalize:
            return {}

        def summed_ipo(pc, pr, rc, rr, lc, lr, beta):
            return losses.ipo_loss(pc, pr, rc, rr, lc, lr, tau=beta, length_normalize=False)

        return {"prefopt_loss": summed_ipo}

    @classmethod
    def overrides(cls, recipe):
        out = super().overrides(recipe)
        if not recipe.loss_params.length_normalize:
            out.append(
                "loss: summed IPO via prefopt.training.losses.ipo_loss(length_normalize=False) (TRL averages)"
            )
        return out
