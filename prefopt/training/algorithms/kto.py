"""KTO (Ethayarajh et al. 2024) → ``trl.KTOTrainer`` (``loss_type="kto"``), unpaired data."""

from prefopt.training.algorithms import Adapter, register


@register
class KTOAdapter(Adapter):
    name = "kto"
    data_kind = "unpaired"
    uses_reference = True
    trl_trainer = "trl.KTOTrainer"
    paper = "Ethayarajh et al. 2024, arXiv:2402.01306"

    @classmethod
    def config_class(cls):
        from trl import KTOConfig

        return KTOConfig

    @classmethod
    def trainer_class(cls, recipe):
        from prefopt.training.trainers import PrefoptKTOTrainer

        return PrefoptKTOTrainer

    @classmethod
    def loss_kwargs(cls, recipe):
        p = recipe.loss_params
        return {
            "loss_type": "kto",
            "beta": p.beta,
            "desirable_weight": p.desirable_weight,
            "undesirable_weight": p.undesirable_weight,
        }
