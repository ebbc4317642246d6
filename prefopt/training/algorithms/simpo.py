"""SimPO (Meng et al. 2024) → ``trl.experimental.cpo.CPOTrainer`` with ``loss_type="simpo"``.

TRL's CPOTrainer defaults to ``cpo_alpha=1.0`` (an NLL term: CPO-SimPO) and takes an *absolute* γ
(``simpo_gamma``); the paper's recipes give γ/β. prefopt sets ``cpo_alpha=0`` and
``simpo_gamma = beta * gamma_beta_ratio`` so TRL computes the paper's loss.
"""

from prefopt.config.algorithms import ALGORITHMS
from prefopt.training import losses
from prefopt.training.algorithms.base import Adapter, register
from prefopt.training.trainers import PrefoptCPOTrainer


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
            "cpo_alpha": 0.0,
            "label_smoothing": p.label_smoothing,
        }

    @classmethod
    def overrides(cls, recipe):
        return super().overrides(recipe) + [
            "config: cpo_alpha=0 (TRL default 1.0 adds an NLL term: CPO-SimPO, not SimPO)",
            "config: simpo_gamma = beta * gamma_beta_ratio (TRL's gamma is absolute)",
            "tokenisation: no BOS prepended (TRL's CPO adds one; SFT/DPO do not)",
        ]
