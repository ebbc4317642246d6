"""KTO (Ethayarajh et al. 2024) → ``trl.KTOTrainer`` (``loss_type="kto"``), unpaired data.

Once the training rows are loaded, :meth:`KTOAdapter.check_data` applies KTO's weighting rule
(λ_D·n_D : λ_U·n_U in [1, 4/3], :func:`prefopt.config.fidelity.check_kto_weights`).
"""

from prefopt.config.algorithms import ALGORITHMS
from prefopt.config.fidelity import check_kto_weights
from prefopt.training import losses
from prefopt.training.algorithms.base import Adapter, register
from prefopt.training.trainers import PrefoptKTOTrainer


@register
class KTOAdapter(Adapter):
    spec = ALGORITHMS["kto"]
    trainer = PrefoptKTOTrainer
    reference_loss = staticmethod(losses.kto_loss)

    @classmethod
    def loss_kwargs(cls, recipe):
        p = recipe.loss_params
        return {
            "loss_type": "kto",
            "beta": p.beta,
            "desirable_weight": p.desirable_weight,
            "undesirable_weight": p.undesirable_weight,
        }

    @classmethod
    def check_data(cls, recipe, train_ds, log) -> None:
        labels = train_ds["label"]
        n_d = sum(1 for x in labels if x)
        p = recipe.loss_params
        msg = check_kto_weights(n_d, len(labels) - n_d, p.desirable_weight, p.undesirable_weight)
        if msg:
            log.warning(msg)
