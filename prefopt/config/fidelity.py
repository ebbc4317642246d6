"""The fidelity guard: recipe settings that would make TRL 1.16 silently compute something other than the
paper's algorithm (or fail only after the model is loaded) are caught when the recipe is loaded.

:func:`check_recipe` runs inside :func:`prefopt.config.recipe.load_recipe`, after the schema and the
``training:`` keys have been validated and before any model or dataset is touched. Each rule is one
record in :data:`RULES` — an id, the algorithms it applies to, a predicate over
``(algorithm, loss, training)``, a severity, a message and a fix — so when TRL changes, the guard
changes by editing a row. ``error`` rules raise one :class:`~prefopt.core.errors.PrefoptError` listing every
violation (rule id, reason, fix); ``warn`` rules are logged on the ``prefopt`` logger. The table is
rendered in ``docs/losses.md`` ("Fidelity guard").

:func:`loss_key_hint` turns a wrong ``loss:`` key into a specific sentence (the recipe loader appends it
to its unknown-key error), and :func:`check_kto_weights` implements KTO's 1:1–4:3 weighting rule once
the label counts are known.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prefopt.config.algorithms import (
    ALGORITHMS,
    CPO_TRAINER,
    DPO_TRAINER,
    KTO_TRAINER,
    LOSS_CLASSES,
    get_spec,
    names_where,
    spec_or_none,
)
from prefopt.core.errors import PrefoptError

logger = logging.getLogger("prefopt")

ALL = frozenset(ALGORITHMS)
ON_DPO_TRAINER = names_where(lambda s: s.trl_trainer == DPO_TRAINER)
ON_KTO_TRAINER = names_where(lambda s: s.trl_trainer == KTO_TRAINER)
ON_CPO_TRAINER = names_where(lambda s: s.trl_trainer == CPO_TRAINER)
WITHOUT_REFERENCE = names_where(lambda s: not s.uses_reference)
WITH_GAMMA_RATIO = names_where(lambda s: s.takes("gamma_beta_ratio"))


def _display(algorithm: str) -> str:
    spec = spec_or_none(algorithm)
    return spec.display if spec else algorithm


Predicate = Callable[[str, Mapping[str, Any], Mapping[str, Any]], bool]
Text = str | Callable[[str, Mapping[str, Any], Mapping[str, Any]], str]


@dataclass(frozen=True)
class Rule:
    """One fidelity rule.

    ``when(algorithm, loss, training)`` is called only for ``algorithm in algorithms``; ``loss`` holds
    the algorithm's loss parameters with defaults filled in, ``training`` the raw ``training:`` mapping.
    ``message``/``fix`` are strings formatted with ``{algorithm}``, ``{loss[...]}``, ``{training[...]}``
    (``str.format``), or callables taking the same three arguments.
    """

    id: str
    algorithms: frozenset[str]
    when: Predicate
    severity: Literal["error", "warn"]
    message: Text
    fix: Text
    trl_source: str = ""  # where TRL 1.16 does the thing this rule guards against (for docs)

    def render(self, text: Text, algorithm: str, loss: Mapping, training: Mapping) -> str:
        if callable(text):
            return text(algorithm, loss, training)
        return text.format(algorithm=algorithm, loss=loss, training=training, name=_display(algorithm))


@dataclass(frozen=True)
class Finding:
    rule_id: str
    severity: Literal["error", "warn"]
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.rule_id}] {self.message} Fix: {self.fix}"


# --------------------------------------------------------------------------------------------- rule helpers
def _given(training: Mapping, key: str) -> bool:
    return key in training and training[key] is not None


def _liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def _beta_owner(algorithm: str) -> str:
    """training.beta → the loss: key that owns it."""
    return f"loss.{get_spec(algorithm).scale_param}"


def _knob_rule(key: str, algorithms: frozenset[str], message: Text, fix: Text, trl_source: str = "") -> Rule:
    return Rule(
        id=f"training-{key.replace('_', '-')}",
        algorithms=algorithms,
        when=lambda a, loss, t, _k=key: _given(t, _k),
        severity="error",
        message=message,
        fix=fix,
        trl_source=trl_source,
    )


def _beta_message(a, loss, t) -> str:
    spec = get_spec(a)
    owner = _beta_owner(a)
    extra = (
        f" (TRL's {spec.trl_trainer_name} reads beta as {spec.display}'s {spec.scale_symbol})"
        if spec.scale_param != "beta"
        else ""
    )
    return (
        f"training.beta = {t['beta']!r} is a loss parameter that prefopt sets from `loss:`{extra}; the adapter "
        f"would overwrite it with {owner} = {loss.get(owner.split('.', 1)[1])!r}, so the value given here is ignored."
    )


def _simpo_gamma_message(a, loss, t) -> str:
    beta = loss.get("beta", 2.0)
    g = t["simpo_gamma"]
    ratio = f"{g / beta:.4g}" if isinstance(g, (int, float)) and beta else "γ/β"
    return (
        f"training.simpo_gamma = {g!r} is TRL's *absolute* γ; prefopt takes the paper's γ/β as "
        f"loss.gamma_beta_ratio and passes simpo_gamma = β·gamma_beta_ratio itself. With loss.beta = {beta!r} "
        f"your γ is gamma_beta_ratio = {ratio}."
    )


def _label_smoothing_message(a, loss, t) -> str:
    spec = get_spec(a)
    if spec.takes("label_smoothing"):
        extra = (
            " (TRL 1.16's DPO sigmoid loss ignores it anyway; prefopt computes cDPO itself)"
            if spec.trl_trainer == DPO_TRAINER
            else ""
        )
        return (
            f"training.label_smoothing = {t['label_smoothing']!r} is {spec.display}'s ε, which prefopt sets from "
            f"loss.label_smoothing; the adapter would overwrite this value{extra}."
        )
    return (
        f"{spec.display} does not use label smoothing; training.label_smoothing would be ignored by its loss."
    )


def _label_smoothing_fix(a, loss, t) -> str:
    if get_spec(a).takes("label_smoothing"):
        return "set loss.label_smoothing instead and remove training.label_smoothing."
    return "remove training.label_smoothing."


_LOSS_VARIANT_KEYS = {
    # DPOConfig fields whose non-default values turn DPO/IPO into another algorithm
    "ld_alpha": (None, "LD-DPO (down-weights the longer completion's tail)"),
    "use_weighting": (False, "WPO (weights each pair by its policy probability)"),
    "f_divergence_type": ("reverse_kl", "f-DPO (a different divergence)"),
    "loss_weights": (None, "a weighted mix of TRL losses"),
}


def _variant_when(a, loss, t) -> bool:
    return any(k in t and t[k] != default for k, (default, _) in _LOSS_VARIANT_KEYS.items())


def _variant_message(a, loss, t) -> str:
    parts = [
        f"training.{k} = {t[k]!r} makes TRL compute {what}"
        for k, (default, what) in _LOSS_VARIANT_KEYS.items()
        if k in t and t[k] != default
    ]
    return "; ".join(parts) + f", which is not algorithm: {a} (and prefopt's loss override would not see it)."


def _variant_fix(a, loss, t) -> str:
    keys = [k for k, (default, _) in _LOSS_VARIANT_KEYS.items() if k in t and t[k] != default]
    return "remove " + ", ".join(f"training.{k}" for k in keys) + "."


def _liger_override_when(a, loss, t) -> bool:
    return bool(t.get("use_liger_kernel")) and get_spec(a).own_loss(loss) is not None


def _liger_override_message(a, loss, t) -> str:
    what = get_spec(a).own_loss(loss)
    return (
        f"training.use_liger_kernel with {what}, a loss prefopt computes in its own trainer subclass. TRL 1.16's "
        "DPOTrainer applies only Liger's layer kernels (it forces fused_linear_cross_entropy off), so the override "
        "still runs; but the option is deprecated there, a separately loaded reference model is not patched "
        "(policy and reference then differ numerically at step 0), and a Liger loss path, as in older TRL, "
        "would bypass the override."
    )


# --------------------------------------------------------------------------------------------- RULES
RULES: list[Rule] = [
    Rule(
        id="padding-free-dpo",
        algorithms=ON_DPO_TRAINER,
        when=lambda a, loss, t: bool(t.get("padding_free")),
        severity="error",
        message=(
            "training.padding_free: true is not honoured by TRL 1.16's DPOTrainer: it warns and silently falls "
            "back to padding, so the run would not be padding-free."
        ),
        fix="remove training.padding_free.",
        trl_source="trl/trainer/dpo_trainer.py:733-739",
    ),
    # ---- TRL loss knobs that prefopt owns (the adapter overwrites them from `loss:`)
    _knob_rule(
        "beta",
        names_where(lambda s: s.scale_param is not None),  # a reward model's config has no beta
        _beta_message,
        lambda a, loss, t: f"set {_beta_owner(a)} instead and remove training.beta.",
    ),
    _knob_rule(
        "loss_type",
        ALL,
        "training.loss_type = {training[loss_type]!r}: prefopt chooses TRL's loss_type from `algorithm:` "
        "(it is set from algorithm: {algorithm} and would overwrite this).",
        f"remove training.loss_type; pick the loss with `algorithm:` ({', '.join(ALGORITHMS)}).",
    ),
    _knob_rule(
        "label_smoothing",
        ALL,
        _label_smoothing_message,
        _label_smoothing_fix,
        "trl/trainer/dpo_trainer.py:1387-1388 (sigmoid ignores it)",
    ),
    _knob_rule(
        "simpo_gamma",
        ALL,
        _simpo_gamma_message,
        "set loss.gamma_beta_ratio (γ/β) instead and remove training.simpo_gamma.",
        "trl/experimental/cpo/cpo_trainer.py:715-722",
    ),
    _knob_rule(
        "cpo_alpha",
        ALL,
        "training.cpo_alpha = {training[cpo_alpha]!r}: prefopt sets SimPO's cpo_alpha from loss.sft_weight "
        "(default 0, the paper's SimPO); cpo_alpha > 0 adds an NLL term on the chosen replies (CPO-SimPO, "
        "TRL's default 1.0).",
        "remove training.cpo_alpha; for CPO-SimPO set loss.sft_weight (TRL's default is 1.0).",
        "trl/experimental/cpo/cpo_trainer.py:842-845, 890",
    ),
    _knob_rule(
        "alpha",
        ON_CPO_TRAINER,
        "training.alpha = {training[alpha]!r} is CPOTrainer's AlphaPO reward transform, which replaces SimPO's "
        "average log-prob reward: not algorithm: simpo.",
        "remove training.alpha.",
        "trl/experimental/cpo/cpo_trainer.py:696-709",
    ),
    _knob_rule(
        "center_rewards_coefficient",
        names_where(lambda s: s.takes("center_rewards_coefficient")),
        "training.center_rewards_coefficient = {training[center_rewards_coefficient]!r} is the reward model's η, "
        "which prefopt sets from `loss:`.",
        "set loss.center_rewards_coefficient instead and remove training.center_rewards_coefficient.",
    ),
    _knob_rule(
        "desirable_weight",
        ALL,
        "training.desirable_weight = {training[desirable_weight]!r} is KTO's λ_D, which prefopt sets from `loss:`.",
        "set loss.desirable_weight instead and remove training.desirable_weight.",
    ),
    _knob_rule(
        "undesirable_weight",
        ALL,
        "training.undesirable_weight = {training[undesirable_weight]!r} is KTO's λ_U, which prefopt sets from `loss:`.",
        "set loss.undesirable_weight instead and remove training.undesirable_weight.",
    ),
    Rule(
        id="trl-loss-variant",
        algorithms=ON_DPO_TRAINER,
        when=_variant_when,
        severity="error",
        message=_variant_message,
        fix=_variant_fix,
        trl_source="trl/trainer/dpo_trainer.py:1303-1315, 1353-1381, 1518-1528",
    ),
    # ---- SimPO's γ/β
    Rule(
        id="simpo-gamma-ratio-range",
        algorithms=WITH_GAMMA_RATIO,
        when=lambda a, loss, t: loss.get("gamma_beta_ratio", 0.5) > 1.0,
        severity="warn",
        message=lambda a, loss, t: (
            f"loss.gamma_beta_ratio = {loss['gamma_beta_ratio']!r} is γ/β, outside the paper's 0–1 range "
            "(published configs: 0.1–0.8). If this is an absolute γ, γ/β = "
            f"{loss['gamma_beta_ratio'] / loss.get('beta', 2.0):.4g} with loss.beta = {loss.get('beta', 2.0)!r}. "
            "(TRL's CPOConfig defaults β = 0.1, simpo_gamma = 0.5 mean γ/β = 5.)"
        ),
        fix="set loss.gamma_beta_ratio to γ/β (0.5 is the SimPO default; see docs/losses.md).",
    ),
    # ---- Liger
    Rule(
        id="liger-kernel-missing",
        algorithms=ALL,
        when=lambda a, loss, t: bool(t.get("use_liger_kernel")) and not _liger_available(),
        severity="error",
        message=(
            "training.use_liger_kernel: true but the liger-kernel package is not installed; transformers' Trainer "
            "would raise ImportError only after the model has been loaded."
        ),
        fix="pip install liger-kernel, or remove training.use_liger_kernel.",
        trl_source="transformers/integrations/liger.py apply_liger_kernel",
    ),
    Rule(
        id="liger-with-loss-override",
        algorithms=ON_DPO_TRAINER,
        when=_liger_override_when,
        severity="warn",
        message=_liger_override_message,
        fix="remove training.use_liger_kernel (or accept the policy/reference kernel mismatch).",
        trl_source="trl/trainer/dpo_trainer.py:939-952",
    ),
    # ---- reference model
    Rule(
        id="precompute-ref-without-reference",
        algorithms=WITHOUT_REFERENCE,
        when=lambda a, loss, t: bool(t.get("precompute_ref_log_probs")),
        severity="warn",
        message="training.precompute_ref_log_probs has no effect: {name} uses no reference model.",
        fix="remove training.precompute_ref_log_probs.",
    ),
    # ---- KTO's trainer preconditions (TRL raises them only after the model is loaded)
    Rule(
        id="kto-per-device-batch",
        algorithms=ON_KTO_TRAINER,
        when=lambda a, loss, t: (
            _given(t, "per_device_train_batch_size") and t["per_device_train_batch_size"] <= 1
        ),
        severity="error",
        message=(
            "training.per_device_train_batch_size = {training[per_device_train_batch_size]!r}: KTO estimates its KL "
            "reference point from mismatched (prompt, completion) pairs inside each per-device batch, so it needs "
            "at least 2 examples per device (TRL's KTOTrainer raises otherwise)."
        ),
        fix="set training.per_device_train_batch_size to 2 or more (TRL's docs suggest ≥ 4).",
        trl_source="trl/trainer/kto_trainer.py:844-847",
    ),
    Rule(
        id="kto-sampling-strategy",
        algorithms=ON_KTO_TRAINER,
        when=lambda a, loss, t: (
            _given(t, "train_sampling_strategy") and t["train_sampling_strategy"] != "sequential"
        ),
        severity="error",
        message=(
            "training.train_sampling_strategy = {training[train_sampling_strategy]!r}: KTO's mismatched KL pairs are "
            "built for fixed-order batches; TRL's KTOTrainer requires 'sequential' (prefopt shuffles the data "
            "itself, see data.shuffle)."
        ),
        fix="remove training.train_sampling_strategy (or set it to 'sequential').",
        trl_source="trl/trainer/kto_trainer.py:837-843",
    ),
]


# --------------------------------------------------------------------------------------------- checking
def _resolved_loss(algorithm: str, loss: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return LOSS_CLASSES[algorithm](**dict(loss)).model_dump()
    except Exception:  # invalid loss sections are reported by the schema, not here
        return dict(loss)


def _parts(recipe) -> tuple[str, dict, dict]:
    if isinstance(recipe, Mapping):
        algorithm = recipe.get("algorithm")
        loss = recipe.get("loss") or {}
        training = recipe.get("training") or {}
    else:
        algorithm, loss, training = recipe.algorithm, recipe.loss, recipe.training
    return str(algorithm), _resolved_loss(str(algorithm), loss), dict(training)


def evaluate_rules(recipe, rules: list[Rule] | None = None) -> list[Finding]:
    """Every finding of ``rules`` (default :data:`RULES`) on ``recipe`` (a Recipe or a recipe dict)."""
    algorithm, loss, training = _parts(recipe)
    findings = []
    for rule in RULES if rules is None else rules:
        if algorithm not in rule.algorithms or not rule.when(algorithm, loss, training):
            continue
        findings.append(
            Finding(
                rule.id,
                rule.severity,
                rule.render(rule.message, algorithm, loss, training),
                rule.render(rule.fix, algorithm, loss, training),
            )
        )
    return findings


def check_recipe(recipe, where: str | None = None) -> list[Finding]:
    """Apply :data:`RULES`. Warnings go to the ``prefopt`` logger; errors raise one PrefoptError
    naming every violated rule with its reason and fix. Returns the findings (warnings only, when it
    returns)."""
    findings = evaluate_rules(recipe)
    prefix = f"{where}: " if where else ""
    for f in findings:
        if f.severity == "warn":
            logger.warning("%sfidelity warning %s", prefix, f)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        head = f"fidelity check failed ({len(errors)} problem{'s' if len(errors) > 1 else ''})"
        raise PrefoptError(f"{head}: " + " ".join(str(f) for f in errors), where=where)
    return findings


# --------------------------------------------------------------------------------------------- loss: key hints
_HintText = str | Callable[[str, str, Any, Mapping | None], str]

GENERIC_LOSS_KEY_HINTS: dict[str, _HintText] = {
    "loss_type": " prefopt picks TRL's loss_type from `algorithm:`; change the algorithm instead.",
}
"""``loss:`` keys explained the same way for every algorithm (keys compared case-insensitively)."""


def _hints() -> dict[tuple[str, str], _HintText]:
    out: dict[tuple[str, str], _HintText] = {}
    for spec in ALGORITHMS.values():
        out.update({(spec.name, k): v for k, v in spec.loss_key_hints.items()})
        if not spec.takes("label_smoothing"):
            for key in ("label_smoothing", "epsilon"):
                out[(spec.name, key)] = f" {spec.display} does not use label smoothing."
    out.update({("*", k): v for k, v in GENERIC_LOSS_KEY_HINTS.items()})
    return out


LOSS_KEY_HINTS: dict[tuple[str, str], _HintText] = _hints()
"""(algorithm or "*", lower-case key) → sentence: the table's hints, plus "does not use label smoothing"
for the algorithms without ε, plus :data:`GENERIC_LOSS_KEY_HINTS`."""


def loss_key_hint(algorithm: str, key: str, value: Any = None, loss: Mapping | None = None) -> str:
    """A specific sentence for a ``loss:`` key that the algorithm does not take, else ``""``.

    The sentence starts with a space (like :func:`prefopt.core.errors.did_you_mean`) so the recipe loader
    can append it to its unknown-key message. ``value`` and ``loss`` (the recipe's loss mapping) are
    optional and only make some sentences more concrete.
    """
    k = str(key).lower()
    text = LOSS_KEY_HINTS.get((algorithm, k)) or LOSS_KEY_HINTS.get(("*", k))
    if text is None:
        return ""
    return text(algorithm, key, value, loss) if callable(text) else text


# --------------------------------------------------------------------------------------------- KTO weights
KTO_RATIO_BOUNDS = (1.0, 4.0 / 3.0)


def _fmt_range(lo: float, hi: float) -> str:
    """[lo, hi] rounded inwards so every printed value satisfies the rule."""
    for digits in (2, 3, 4, 6):
        s = 10**digits
        rlo, rhi = math.ceil(lo * s - 1e-9) / s, math.floor(hi * s + 1e-9) / s
        if rlo <= rhi:
            return f"[{rlo:g}, {rhi:g}]"
    return f"[{lo:.6g}, {hi:.6g}]"


# The weighted ratio a recipe without weights gets: the upper end of KTO's rule, written as TRL rounds it
# (TRL's KTOTrainer warns outside [1, 1.33] at two decimals). Why the upper end: a desirable reply's
# log-ratio is bounded above (log π ≤ 0), an undesirable one's is not, so in batches that mix labels the
# push-down side dominates and drags shared tokens down with it; the most desirable weight the rule allows
# is what counters it. Measured in docs/world.md ("KTO's default weights"): on two builds of the second
# world it lifted prefopt's KTO by +0.13 to +0.20 on every seed's batch order, and it left the builtin
# KTO quickstart unchanged (+0.349 → +0.353).
KTO_AUTO_RATIO = 1.33


def auto_kto_weights(n_desirable: int, n_undesirable: int) -> tuple[float, float]:
    """λ_D, λ_U for a recipe that gives none, so that ``λ_D·n_D : λ_U·n_U`` = :data:`KTO_AUTO_RATIO`
    (1.33, the upper end of KTO's rule [1, 4/3], Ethayarajh et al. 2024, Eq. 8) with the other weight 1:
    ``n_D : n_U`` at most 1.33 — balanced counts included — gets λ_D = 1.33·n_U/n_D, rounded down at the
    second decimal; more than 1.33 gets λ_U = n_D/(1.33·n_U), rounded up. Either way the rounded weights
    satisfy both prefopt's exact rule and TRL's two-decimal check."""
    if n_desirable <= 0 or n_undesirable <= 0:
        return 1.0, 1.0  # nothing to balance; check_kto_weights says why
    ratio = n_desirable / n_undesirable
    if ratio <= KTO_AUTO_RATIO:
        return math.floor(KTO_AUTO_RATIO / ratio * 100 + 1e-9) / 100, 1.0
    return 1.0, math.ceil(ratio / KTO_AUTO_RATIO * 100 - 1e-9) / 100


def check_kto_weights(
    n_desirable: int, n_undesirable: int, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> str | None:
    """KTO's weighting rule (Ethayarajh et al. 2024, Eq. 8; TRL docs ``kto_trainer.md``): choose λ_D, λ_U
    so that ``λ_D·n_D : λ_U·n_U`` lies in ``[1, 4/3]``. Returns ``None`` when it does, else a warning
    that suggests either weight (like TRL's ``KTOTrainer`` warning, but with the exact 4/3 bound and
    also when the counts are equal)."""
    if n_desirable < 0 or n_undesirable < 0:
        raise ValueError("label counts must be non-negative")
    if desirable_weight <= 0 or undesirable_weight <= 0:
        raise ValueError("KTO weights must be positive")
    if n_desirable == 0 or n_undesirable == 0:
        missing = "desirable" if n_desirable == 0 else "undesirable"
        present = "undesirable" if n_desirable == 0 else "desirable"
        return (
            f"KTO training data has no {missing} examples ({n_desirable} desirable, {n_undesirable} undesirable): "
            f"the λ_D·n_D : λ_U·n_U rule (1:1 to 4:3) cannot be met and only {present} completions get a signal. "
            "Add the missing label (data.transform: unpair turns preference pairs into both) or check the labels."
        )
    d_mass, u_mass = desirable_weight * n_desirable, undesirable_weight * n_undesirable
    ratio = d_mass / u_mass
    lo, hi = KTO_RATIO_BOUNDS
    if lo - 1e-9 <= ratio <= hi + 1e-9:
        return None
    d_range = _fmt_range(lo * u_mass / n_desirable, hi * u_mass / n_desirable)
    u_range = _fmt_range(d_mass / (hi * n_undesirable), d_mass / (lo * n_undesirable))
    return (
        f"KTO weights: λ_D·n_D : λ_U·n_U = {desirable_weight:g}·{n_desirable} : {undesirable_weight:g}·{n_undesirable} "
        f"= {ratio:.3g} : 1, outside the recommended 1:1 to 4:3 (Ethayarajh et al. 2024, Eq. 8). "
        f"Set EITHER loss.desirable_weight in {d_range} (keeping undesirable_weight = {undesirable_weight:g}) "
        f"OR loss.undesirable_weight in {u_range} (keeping desirable_weight = {desirable_weight:g}), not both."
    )


# --------------------------------------------------------------------------------------------- docs
def rules_markdown() -> str:
    """The rules as a markdown table (kept in docs/losses.md)."""
    rows = ["| id | algorithms | severity | TRL 1.16 source |", "|---|---|---|---|"]
    for r in RULES:
        algs = "all" if r.algorithms == ALL else ", ".join(sorted(r.algorithms))
        rows.append(f"| `{r.id}` | {algs} | {r.severity} | {r.trl_source or '–'} |")
    return "\n".join(rows)


__all__ = [
    "ALL",
    "Finding",
    "KTO_AUTO_RATIO",
    "KTO_RATIO_BOUNDS",
    "LOSS_KEY_HINTS",
    "RULES",
    "Rule",
    "auto_kto_weights",
    "check_kto_weights",
    "check_recipe",
    "evaluate_rules",
    "loss_key_hint",
    "rules_markdown",
]
