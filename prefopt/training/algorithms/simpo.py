"""SimPO (Meng et al. 2024) → ``trl.experimental.cpo.CPOTrainer`` with ``loss_type="simpo"``.

TRL's CPOTrainer defaults to ``cpo_alpha=1.0`` (an NLL term: CPO-SimPO) and takes an *absolute* γ
(``simpo_gamma``); the paper's recipes give γ/β. prefopt passes ``simpo_gamma = beta * gamma_beta_ratio``
and ``cpo_alpha = loss.sft_weight``, whose default 0 is the paper's SimPO (``sft_weight`` is the SimPO
reference code's name for the same term: a token mean of the chosen replies' NLL over the batch, added
to the SimPO loss). ``sft_weight > 0`` is CPO-SimPO, and the overrides line in the manifest says so.
"""

from prefopt.config.algorithms import ALGORITHMS
from prefopt.training import losses
from prefopt.training.algorithms.base import Adapter, register
from prefopt.training.trainers import PrefoptCPOTrainer


def nll_line(sft_weight: float) -> str:
    """The overrides line for the NLL term: the paper's SimPO (0) or CPO-SimPO (> 0)."""
    if not sft_weight:
        return (
            "config: cpo_alpha=0 from loss.sft_weight 0, the paper's SimPO "
            "(TRL's default 1.0 adds an NLL term on the chosen replies: CPO-SimPO)"
        )
    default = ", TRL's default" if sft_weight == 1.0 else ""
    return (
        f"loss: CPO-SimPO, not the paper's SimPO: loss.sft_weight = {sft_weight:g} → cpo_alpha = "
        f"{sft_weight:g}{default}, an NLL term on the chosen replies (token mean over the batch) added to "
        "SimPO's loss; sft_weight 0 is the paper's SimPO"
    )


@register
class SimPOAdapter(Adapter):
    spec = ALGORITHMS["simpo"]
    trainer = PrefoptCPOTrainer
    reference_loss = staticmethod(losses.simpo_loss)

    @classmethod
    def loss_kwargs(cls, recipe):
        p = recipe.loss_params
        return {
            "loss_type": "simpo",
            "beta": p.beta,
            "simpo_gamma": p.beta * p.gamma_beta_ratio,
            "cpo_alpha": float(p.sft_weight),
            "label_smoothing": p.label_smoothing,
        }

    @classmethod
    def overrides(cls, recipe):
        return super().overrides(recipe) + [
            nll_line(float(recipe.loss_params.sft_weight)),
            "config: simpo_gamma = beta * gamma_beta_ratio (TRL's gamma is absolute)",
            "tokenisation: no BOS prepended (TRL's CPO adds one; SFT/DPO do not)",
        ]
