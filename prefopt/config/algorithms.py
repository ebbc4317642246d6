"""The table of algorithms: one row per algorithm prefopt trains, and the only place their names are spelled.

Each :class:`AlgorithmSpec` says what the rest of prefopt needs to know about an algorithm without
importing TRL: the data it trains on, whether it uses a reference model, its ``loss:`` schema (the paper's
parameters, with defaults and ranges), which ``loss:`` key TRL's ``beta`` comes from, the TRL config and
trainer classes (as dotted paths, imported only when asked for), whether TRL logs per-token average
log-probs, when prefopt computes the loss itself, and the hints for ``loss:`` keys people confuse.

How a recipe becomes TRL arguments — the trainer subclass, the loss parameters as TRL expects them, the
departures from stock TRL — is the row's adapter: ``prefopt/training/algorithms/<name>.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from prefopt.config.schema import StrictModel
from prefopt.core.errors import PrefoptError, did_you_mean


# --------------------------------------------------------------------------------------------- loss schemas
class LossParams(StrictModel):
    """The ``loss:`` section of one algorithm (its paper's parameters)."""


class DPOLoss(LossParams):
    """Rafailov et al. 2023 (DPO); with ``label_smoothing`` > 0, conservative DPO (cDPO)."""

    beta: float = Field(0.1, gt=0, description="β: KL-regularisation strength.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="ε: probability that a label is flipped (cDPO). 0 is plain DPO."
    )


class IPOLoss(LossParams):
    """Azar et al. 2023 (IPO), Eq. 17: (h - 1/(2τ))²."""

    tau: float = Field(0.1, gt=0, description="τ: regularisation (TRL's `beta` for loss_type='ipo').")
    length_normalize: bool = Field(
        True,
        description=(
            "Average each log-ratio over completion tokens (TRL/HALOs form, default) or sum them "
            "(the paper's reference code). See docs/losses.md."
        ),
    )


class KTOLoss(LossParams):
    """Ethayarajh et al. 2024 (KTO)."""

    beta: float = Field(0.1, gt=0, description="β.")
    desirable_weight: float | None = Field(
        None,
        gt=0,
        description="λ_D. Omit both weights to have prefopt set them from the training data's label counts "
        "at the upper end of the paper's 1:1–4:3 rule, λ_D·n_D : λ_U·n_U = 1.33 (logged, in manifest.json and "
        "--dry-run; docs/losses.md).",
    )
    undesirable_weight: float | None = Field(
        None, gt=0, description="λ_U (omitted: see desirable_weight; one weight given: the other is 1)."
    )


class ORPOLoss(LossParams):
    """Hong et al. 2024 (ORPO): NLL(chosen) − λ·log σ(log-odds ratio)."""

    lam: float = Field(0.1, gt=0, description="λ: weight of the odds-ratio term (TRL's `beta`).")
    nll_on_prompt: bool = Field(
        False,
        description=(
            "false (default, the paper's L_SFT = −log P(y_w|x)): the NLL term covers the chosen completion's "
            "tokens, averaged per example. true: TRL's / the reference code's NLL over prompt + completion tokens."
        ),
    )


class SimPOLoss(LossParams):
    """Meng et al. 2024 (SimPO): −log σ(β·(avg lp_w − avg lp_l) − γ), γ = β·(γ/β)."""

    beta: float = Field(2.0, gt=0, description="β: reward scale.")
    gamma_beta_ratio: float = Field(0.5, ge=0, description="γ/β: target margin relative to β (paper: 0–1).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="ε (0 in every published config).")
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of an NLL term on the chosen replies (the SimPO code's sft_weight, TRL's cpo_alpha). "
        "0 (default, every published config) is the paper's SimPO; TRL's default 1.0 is CPO-SimPO.",
    )


class RewardLoss(LossParams):
    """Bradley-Terry reward model (Ouyang et al. 2022, Eq. 1): −log σ(r(x, y_w) − r(x, y_l) − m).

    ``margin`` (Touvron et al. 2023, Llama 2, Eq. 2) sets m = score_chosen − score_rejected of each pair
    (TRL's ``margin`` column); ``center_rewards_coefficient`` adds η·E[(r_w + r_l)²] (Eisenstein et al.
    2023), which keeps the scalar near zero."""

    margin: bool = Field(
        False,
        description="m = score_chosen − score_rejected per pair (every training pair needs both scores); "
        "false: m = 0, plain Bradley-Terry.",
    )
    center_rewards_coefficient: float | None = Field(
        None, ge=0, description="η: weight of the reward-centering term (TRL's name); omitted: off."
    )


class OnlineDPOLoss(LossParams):
    """Online DPO (Guo et al. 2024, OAIF): DPO's loss on best-vs-worst pairs sampled from the current policy
    and ranked by a judge at every step; ``loss_type: ipo`` takes IPO's loss on them instead."""

    beta: float = Field(
        0.1, gt=0, description="β: KL-regularisation strength (τ of IPO with loss_type: ipo)."
    )
    loss_type: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="sigmoid: DPO's −log σ(β·h); ipo: IPO's (h − 1/(2τ))², length-normalised as TRL's.",
    )


# --------------------------------------------------------------------------------------------- loss-key hints
HintText = str | Callable[[str, str, Any, Mapping | None], str]
"""A sentence (starting with a space) for a ``loss:`` key an algorithm does not take, or a function
``(algorithm, key, value, loss) -> sentence``."""


def _gamma_hint(algorithm, key, value, loss) -> str:
    beta = (loss or {}).get("beta")
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and isinstance(beta, (int, float))
        and beta
    ):
        example = f" Your γ = {value!r} with loss.beta = {beta!r} is gamma_beta_ratio: {value / beta:.4g}."
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        example = f" Your γ = {value!r} is gamma_beta_ratio = {value!r}/β (β is loss.beta, default 2.0)."
    else:
        example = " E.g. γ = 1.0 with β = 2.0 is gamma_beta_ratio: 0.5."
    return f" loss.gamma_beta_ratio takes γ/β; an absolute γ of X is gamma_beta_ratio = X/β.{example}"


_ORPO_LAM = " ORPO's λ is loss.lam (TRL beta, reference code --alpha)."
_NO_NLL = (
    " SimPO's NLL term is loss.sft_weight (the SimPO code's name for TRL's cpo_alpha): the default 0 is the "
    "paper's SimPO, without an NLL term (0 in every published config); TRL's default 1.0 is CPO-SimPO."
)
_KTO_D = " KTO's λ_D is loss.desirable_weight."
_KTO_U = " KTO's λ_U is loss.undesirable_weight."
_RM_BETA = (
    " a Bradley-Terry reward model has no β or reference: its loss is −log σ(r_w − r_l − m); "
    "loss.margin and loss.center_rewards_coefficient are its options."
)


# --------------------------------------------------------------------------------------------- the table
PARAM_SYMBOLS: dict[str, str] = {
    "beta": "β",
    "tau": "τ",
    "lam": "λ",
    "gamma_beta_ratio": "γ/β",
    "label_smoothing": "ε",
    "desirable_weight": "λ_D",
    "undesirable_weight": "λ_U",
}
"""Loss parameter → the paper's symbol (tables, plots, messages)."""

PARAM_WORDS: dict[str, str] = {"lam": "lambda"}
"""Loss parameter → the word used for it in plain-text formulas (default: the parameter's name)."""


@dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm. ``name`` is the recipe's ``algorithm:`` value."""

    name: str
    display: str  # how prose spells it (SimPO)
    paper: str
    data_kind: Literal["paired", "unpaired"]
    uses_reference: bool  # a reference model enters the loss
    loss: type[LossParams]  # the `loss:` schema
    scale_param: (
        str | None  # the loss: key TRL's `beta` is set from (β, τ, λ): the reward scale, the swept parameter
    )  # None: the algorithm has no β (a reward model)
    trl_config: str  # dotted path of the TRL config class
    trl_trainer: str  # dotted path of the TRL trainer class prefopt's trainer derives from
    averaged_logps: bool  # TRL logs (and the implicit reward uses) per-token average log-probs
    own_loss: Callable[[Mapping[str, Any]], str | None] = field(default=lambda loss: None, repr=False)
    samples_online: bool = False
    """The algorithm samples its own training pairs from the current policy each step (``online:`` block:
    k, temperature, the judge); its data source supplies prompts only."""
    """Given the resolved ``loss:`` parameters: a description of the loss prefopt computes itself instead of
    TRL's (its trainer subclass swaps the loss in), or None when TRL's loss is used."""
    loss_key_hints: Mapping[str, HintText] = field(default_factory=dict, repr=False)
    """Lower-case ``loss:`` key this algorithm does not take → the sentence explaining where it belongs."""
    trains: Literal["policy", "reward_model"] = "policy"
    """What a run produces: a policy (a causal LM, evaluated by sampling against its starting model) or a
    reward model (a sequence classifier with one logit, evaluated by ranking held-out pairs)."""

    @property
    def num_labels(self) -> int | None:
        """The classification head's size for a reward model (1), None for a causal-LM policy."""
        return 1 if self.trains == "reward_model" else None

    def config_class(self) -> type:
        """The TRL config class (imports TRL)."""
        module, _, name = self.trl_config.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def loss_params(self, loss: Mapping[str, Any] | None = None) -> LossParams:
        return self.loss(**dict(loss or {}))

    @property
    def trl_trainer_name(self) -> str:
        return self.trl_trainer.rpartition(".")[2]

    @property
    def scale_symbol(self) -> str:
        return PARAM_SYMBOLS.get(self.scale_param, self.scale_param)

    @property
    def scale_word(self) -> str:
        return PARAM_WORDS.get(self.scale_param, self.scale_param)

    @property
    def rewards_kl_proxy(self) -> bool:
        """TRL's logged rewards/chosen and rewards/rejected are β·log π/π_ref of paired data (DPO, IPO), so
        |rewards/chosen + rewards/rejected| / 2β is a KL proxy (KTO logs its own ``kl``; reference-free
        rewards are not log-ratios)."""
        return self.uses_reference and self.data_kind == "paired"

    def takes(self, loss_param: str) -> bool:
        return loss_param in self.loss.model_fields


DPO_TRAINER = "trl.DPOTrainer"
KTO_TRAINER = "trl.KTOTrainer"
ORPO_TRAINER = "trl.experimental.orpo.ORPOTrainer"
CPO_TRAINER = "trl.experimental.cpo.CPOTrainer"
REWARD_TRAINER = "trl.RewardTrainer"

ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec(
            name="dpo",
            display="DPO",
            paper="Rafailov et al. 2023, arXiv:2305.18290 (cDPO: Mitchell 2023)",
            data_kind="paired",
            uses_reference=True,
            loss=DPOLoss,
            scale_param="beta",
            trl_config="trl.DPOConfig",
            trl_trainer=DPO_TRAINER,
            averaged_logps=False,
            own_loss=lambda loss: (
                "cDPO (loss.label_smoothing > 0)" if loss.get("label_smoothing", 0.0) > 0 else None
            ),
            loss_key_hints={
                "tau": " IPO's τ belongs to algorithm: ipo (as loss.tau); DPO's strength is loss.beta.",
                "length_normalize": (
                    " length-normalised DPO is not DPO; the reference-free length-normalised loss is "
                    "algorithm: simpo."
                ),
                "rpo_alpha": " DPO+NLL (RPO) is not a prefopt loss (TRL 1.x removed rpo_alpha).",
                "epsilon": " cDPO's ε is loss.label_smoothing.",
            },
        ),
        AlgorithmSpec(
            name="ipo",
            display="IPO",
            paper="Azar et al. 2023, arXiv:2310.12036",
            data_kind="paired",
            uses_reference=True,
            loss=IPOLoss,
            scale_param="tau",
            trl_config="trl.DPOConfig",
            trl_trainer=DPO_TRAINER,
            averaged_logps=False,
            own_loss=lambda loss: (
                None if loss.get("length_normalize", True) else "summed IPO (loss.length_normalize: false)"
            ),
            loss_key_hints={
                "beta": " IPO's regularisation is loss.tau (TRL calls it beta).",
                "rpo_alpha": " IPO+NLL is not a prefopt loss (TRL 1.x removed rpo_alpha).",
            },
        ),
        AlgorithmSpec(
            name="kto",
            display="KTO",
            paper="Ethayarajh et al. 2024, arXiv:2402.01306",
            data_kind="unpaired",
            uses_reference=True,
            loss=KTOLoss,
            scale_param="beta",
            trl_config="trl.KTOConfig",
            trl_trainer=KTO_TRAINER,
            averaged_logps=False,
            loss_key_hints={
                **dict.fromkeys(("desirable", "lambda_d", "λ_d", "w_d", "desirable_weights"), _KTO_D),
                **dict.fromkeys(("undesirable", "lambda_u", "λ_u", "w_u", "undesirable_weights"), _KTO_U),
            },
        ),
        AlgorithmSpec(
            name="online_dpo",
            display="online DPO",
            paper="Guo et al. 2024 (OAIF), arXiv:2402.04792; loss: Rafailov et al. 2023 / Azar et al. 2023",
            data_kind="paired",  # prompts are taken from the rows; their replies are not trained on
            uses_reference=True,
            loss=OnlineDPOLoss,
            scale_param="beta",
            trl_config="trl.DPOConfig",
            trl_trainer=DPO_TRAINER,
            averaged_logps=False,
            own_loss=lambda loss: "online DPO on sampled, judged pairs (prefopt.training.online)",
            samples_online=True,
            loss_key_hints={
                "tau": " online DPO's IPO form takes its τ as loss.beta (with loss.loss_type: ipo).",
                "label_smoothing": " cDPO is algorithm: dpo; online DPO's pairs are judged each step.",
            },
        ),
        AlgorithmSpec(
            name="orpo",
            display="ORPO",
            paper="Hong et al. 2024, arXiv:2403.07691",
            data_kind="paired",
            uses_reference=False,
            loss=ORPOLoss,
            scale_param="lam",
            trl_config="trl.experimental.orpo.ORPOConfig",
            trl_trainer=ORPO_TRAINER,
            averaged_logps=True,
            loss_key_hints=dict.fromkeys(("beta", "alpha", "lambda", "lambda_", "lmbda", "λ"), _ORPO_LAM),
        ),
        AlgorithmSpec(
            name="simpo",
            display="SimPO",
            paper="Meng et al. 2024, arXiv:2405.14734",
            data_kind="paired",
            uses_reference=False,
            loss=SimPOLoss,
            scale_param="beta",
            trl_config="trl.experimental.cpo.CPOConfig",
            trl_trainer=CPO_TRAINER,
            averaged_logps=True,
            loss_key_hints={
                "gamma": _gamma_hint,
                "simpo_gamma": _gamma_hint,
                "cpo_alpha": _NO_NLL,
                "alpha": " CPOTrainer's alpha is AlphaPO's reward transform, not part of SimPO.",
                "epsilon": " SimPO's ε is loss.label_smoothing.",
            },
        ),
        AlgorithmSpec(
            name="reward",
            display="reward model",
            paper="Bradley-Terry reward model: Ouyang et al. 2022, arXiv:2203.02155 (margin: Touvron et al. "
            "2023, arXiv:2307.09288)",
            data_kind="paired",
            uses_reference=False,
            loss=RewardLoss,
            scale_param=None,
            trl_config="trl.RewardConfig",
            trl_trainer=REWARD_TRAINER,
            averaged_logps=False,
            loss_key_hints={
                **dict.fromkeys(("beta", "tau", "lam", "gamma_beta_ratio"), _RM_BETA),
                "margins": " the margin is loss.margin: true (m = score_chosen − score_rejected per pair).",
                "center_rewards": " reward centering is loss.center_rewards_coefficient (η).",
            },
            trains="reward_model",
        ),
    )
}
"""Algorithm name → its row, in the order prefopt lists them."""

PREFERENCE_ALGORITHMS = tuple(name for name, spec in ALGORITHMS.items() if spec.trains == "policy")
"""The algorithms that train a policy on preferences (every row but the reward model)."""

DPO = ALGORITHMS["dpo"].name
"""The algorithm of iterative (online) DPO's rounds and the base of the RLHF baseline's data."""

REWARD = ALGORITHMS["reward"].name
"""The algorithm that trains a reward model (the RLHF baseline's, and a judge's)."""

AlgorithmName = Literal[tuple(ALGORITHMS)]  # type: ignore[valid-type]
"""The type of ``algorithm:`` in a recipe or a sweep: one of the names of :data:`ALGORITHMS`."""


def algorithm_names() -> list[str]:
    return list(ALGORITHMS)


def get_spec(name: str) -> AlgorithmSpec:
    """The row of ``name``; an unknown name is a :class:`PrefoptError` with a suggestion."""
    spec = ALGORITHMS.get(name)
    if spec is None:
        raise PrefoptError(
            f'unknown algorithm "{name}".{did_you_mean(name, ALGORITHMS)} Choose one of: {", ".join(ALGORITHMS)}.',
            where="algorithm",
        )
    return spec


def spec_or_none(name: Any) -> AlgorithmSpec | None:
    return ALGORITHMS.get(name) if isinstance(name, str) else None


def names_where(predicate: Callable[[AlgorithmSpec], bool]) -> frozenset[str]:
    """The names of the algorithms whose row satisfies ``predicate``."""
    return frozenset(s.name for s in ALGORITHMS.values() if predicate(s))


LOSS_CLASSES: dict[str, type[LossParams]] = {s.name: s.loss for s in ALGORITHMS.values()}
"""Algorithm name → its ``loss:`` schema."""
