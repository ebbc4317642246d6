"""DPO (Rafailov et al. 2023) and cDPO → ``trl.DPOTrainer`` with ``loss_type="sigmoid"``.

TRL 1.x's sigmoid loss silently ignores ``label_smoothing``; with ε > 0 prefopt's trainer subclass
swaps in :func:`prefopt.training.losses.dpo_loss` (cDPO). See docs/losses.md.
"""

from prefopt.config.algorithms import ALGORITHMS
from prefopt.training import losses
from prefopt.training.algorithms.base import Adapter, register
from prefopt.training.trainers import PrefoptDPOTrainer


@register
class DPOAdapter(Adapter):
    spec = ALGORITHMS["dpo"]
    trainer = PrefoptDPOTrainer
    reference_loss = staticmethod(losses.dpo_loss)

    @classmethod
    def loss_kwargs(cls, recipe):
        p = recipe.loss_params
        return {"loss_type": ["sigmoid"], "beta": p.beta, "label_smoothing": p.label_smoothing}

    @classmethod
    def trainer_kwargs(cls, recipe):
        eps = recipe.loss_params.label_smoothing
        if eps <= 0:
            return {}

        def cdpo(pc, pr, rc, rr, lc, lr, beta):
            return losses.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)

        return {"prefopt_loss": cdpo}

    @classmethod
    def overrides(cls, recipe):
        out = super().overrides(recipe)
        if recipe.loss_params.label_smoothing > 0:
            out.append(
                "loss: cDPO via prefopt.training.losses.dpo_loss (TRL's sigmoid ignores label_smoothing)"
            )
        return out
