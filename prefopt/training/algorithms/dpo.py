"""DPO (Rafailov et al. 2023) and cDPO → ``trl.DPOTrainer`` with ``loss_type="sigmoid"``.

TRL 1.x's sigmoid loss silently ignores ``label_smoothing``; with ε > 0 prefopt's trainer subclass
swaps in :func:`prefopt.training.losses.dpo_loss` (cDPO). See docs/losses.md.
"""

from prefopt.training.algorithms import Adapter, register


@register
class DPOAdapter(Adapter):
    name = "dpo"
    data_kind = "paired"
    uses_reference = True
    trl_trainer = "trl.DPOTrainer"
    paper = "Rafailov et al. 2023, arXiv:2305.18290 (cDPO: Mitchell 2023)"

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
        p = recipe.loss_params
        return {"loss_type": ["sigmoid"], "beta": p.beta, "label_smoothing": p.label_smoothing}

    @classmethod
    def overrides(cls, recipe):
        out = super().overrides(recipe)
        if recipe.loss_params.label_smoothing > 0:
            out.append(
                "loss: cDPO via prefopt.training.losses.dpo_loss (TRL's sigmoid ignores label_smoothing)"
            )
        return out
