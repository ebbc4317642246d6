"""Online DPO (Guo et al. 2024, OAIF) → :class:`prefopt.training.online.OnlineDPOTrainer`, a subclass of
prefopt's ``trl.DPOTrainer``: pairs sampled from the current policy and ranked by the recipe's judge at each
step, DPO's sigmoid loss (or IPO's, ``loss.loss_type: ipo``) on them, the starting model as reference.

The judge is built above the training layer (``online.judge``, :func:`prefopt.judge.length.online_judge`)
and handed to the trainer by the pipeline; this adapter passes the ``online:`` block and the loss.
"""

from prefopt.config.algorithms import ALGORITHMS
from prefopt.training import losses
from prefopt.training.algorithms.base import Adapter, register
from prefopt.training.online import OnlineDPOTrainer


@register
class OnlineDPOAdapter(Adapter):
    spec = ALGORITHMS["online_dpo"]
    trainer = OnlineDPOTrainer
    reference_loss = staticmethod(losses.dpo_loss)

    @classmethod
    def loss_kwargs(cls, recipe):
        p = recipe.loss_params
        return {"loss_type": [p.loss_type], "beta": p.beta}

    @classmethod
    def trainer_kwargs(cls, recipe):
        kwargs = {"online": recipe.online, "online_seed": recipe.seed}
        if recipe.loss_params.loss_type == "ipo":

            def ipo(pc, pr, rc, rr, lc, lr, beta):
                return losses.ipo_loss(pc, pr, rc, rr, lc, lr, tau=beta, length_normalize=True)

            kwargs["prefopt_loss"] = ipo
        return kwargs

    @classmethod
    def overrides(cls, recipe):
        out = super().overrides(recipe)
        o = recipe.online
        out.append(
            "data: online — each step samples k replies per training prompt from the current policy "
            "(transformers engine), the judge ranks them, best vs worst are paired (ties: no pair); the rows' "
            "own replies are not trained on"
        )
        if o is not None:
            out.append(
                f"online: k={o.k}, temperature={o.temperature:g}, max_new_tokens={o.max_new_tokens}, "
                f"judge={o.judge.get('type')}, length_penalty={o.length_penalty:g}, kl_budget={o.kl_budget}"
            )
        out.append(
            f"loss: {recipe.loss_params.loss_type} on the sampled pairs via prefopt.training.losses, averaged over "
            "the global batch's non-tied pairs"
        )
        return out
