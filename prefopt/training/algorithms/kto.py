"""KTO (Ethayarajh et al. 2024) → ``trl.KTOTrainer`` (``loss_type="kto"``), unpaired data.

Once the training rows are loaded, :meth:`KTOAdapter.settle_on_data` applies KTO's weighting rule
(λ_D·n_D : λ_U·n_U in [1, 4/3]): a recipe that gives no weights gets them from the label counts, at
the rule's upper end 1.33 (:func:`prefopt.config.fidelity.auto_kto_weights`); explicit weights outside the rule are a warning
(:func:`prefopt.config.fidelity.check_kto_weights`).
"""

from prefopt.config.algorithms import ALGORITHMS
from prefopt.config.fidelity import auto_kto_weights, check_kto_weights
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
        if cls.depends_on_data(recipe):
            raise RuntimeError(
                "KTO weights are set from the label counts: call KTOAdapter.settle_on_data(recipe, train_ds) "
                "before building the TRL config"
            )
        return {
            "loss_type": "kto",
            "beta": p.beta,
            "desirable_weight": 1.0 if p.desirable_weight is None else p.desirable_weight,
            "undesirable_weight": 1.0 if p.undesirable_weight is None else p.undesirable_weight,
        }

    @classmethod
    def depends_on_data(cls, recipe):
        p = recipe.loss_params
        return p.desirable_weight is None and p.undesirable_weight is None

    @classmethod
    def settle_on_data(cls, recipe, train_ds):
        """λ_D, λ_U on the actual label counts. A recipe that gives neither weight gets them from KTO's
        1:1–4:3 rule (its upper end, 1.33); a recipe that gives one gets 1 for the other. Weights outside the rule stay a
        warning (``info["warning"]``), never a silent 1:1."""
        labels = train_ds["label"]
        n_d = sum(1 for x in labels if x)
        n_u = len(labels) - n_d
        p = recipe.loss_params
        if p.desirable_weight is None and p.undesirable_weight is None:
            wd, wu = auto_kto_weights(n_d, n_u)
            source = "auto (λ_D·n_D : λ_U·n_U = 1.33 on the label counts, the upper end of the 1:1–4:3 rule)"
        else:
            kw = cls.loss_kwargs(recipe)
            wd, wu = kw["desirable_weight"], kw["undesirable_weight"]
            source = "recipe"
        info = {
            "desirable_weight": wd,
            "undesirable_weight": wu,
            "n_desirable": n_d,
            "n_undesirable": n_u,
            "weighted_ratio": round(wd * n_d / (wu * n_u), 4) if n_d and n_u else None,
            "source": source,
            "warning": check_kto_weights(n_d, n_u, wd, wu),
        }
        settled = recipe.model_copy(
            update={"loss": {**recipe.loss, "desirable_weight": wd, "undesirable_weight": wu}}
        )
        return settled, info
