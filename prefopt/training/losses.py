"""The five preference losses as pure tensor functions.

Every function takes per-sequence log-probabilities (and, where the loss needs them, completion
lengths) and returns the **per-example** loss, shape ``(batch,)``; the batch loss is its mean. Nothing
here touches a model, so each function can be checked against hand-computed values and against
TRL's own formula code (``tests/test_losses.py``). The trainer subclasses in :mod:`prefopt.training.trainers`
call these functions where TRL's loss differs from the paper (see ``docs/losses.md``).

Conventions
-----------
* ``*_logps`` are **summed** completion log-probs (prompt tokens masked), like TRL's DPO/KTO trainers
  and the reference implementations. ORPO and SimPO average inside (``sum / length``).
* ``*_lengths`` are completion token counts (ints or tensors). As in TRL
  (``completion_mask.sum(dim=1).clamp(min=1)``, ``trl/trainer/dpo_trainer.py``) a length below 1 is
  treated as 1, so an empty completion never divides by zero.
* Numerics: inputs may be float32, bfloat16 or float16. Everything is computed in float32 and the
  result is cast back to the dtype of ``policy_chosen_logps`` (``policy_logps`` for KTO). No NaN/inf
  for log-probs at or near 0 (``-1e-8``, ``0.0``) or far below (``-1e4`` and less), and finite
  gradients there — see :func:`log1mexp` for the one place where this needs care.
* ``h`` denotes ``[lp(y_w) - lp_ref(y_w)] - [lp(y_l) - lp_ref(y_l)]`` and ``ls`` the log-sigmoid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "average_logps",
    "bradley_terry_loss",
    "dpo_loss",
    "ipo_loss",
    "kto_loss",
    "kto_reference_point",
    "log1mexp",
    "orpo_log_odds",
    "orpo_loss",
    "simpo_loss",
]

_LN2 = math.log(2.0)
# log1mexp(x) is -inf at x = 0 (a sequence of probability 1 has infinite odds). Inputs above -_TINY
# are clamped to -_TINY: log1mexp(-1e-20) ≈ -46.05, whose gradient (≈ -1e20) is still finite in
# float32/bfloat16. Any value actually produced by a model's average log-prob that is not exactly 0 is
# far below this, so the clamp only changes the exact-0 (and invalid >0) cases.
_TINY = 1e-20


def _f32(x, like: torch.Tensor) -> torch.Tensor:
    """``x`` (tensor, int or float) as a float32 tensor on ``like``'s device."""
    if isinstance(x, torch.Tensor):
        return x.to(device=like.device, dtype=torch.float32)
    return torch.as_tensor(x, dtype=torch.float32, device=like.device)


def _lengths(lengths, like: torch.Tensor) -> torch.Tensor:
    """Completion lengths as float32, clamped at 1 like TRL's ``completion_mask.sum(1).clamp(min=1)``."""
    return _f32(lengths, like).clamp(min=1.0)


def _out_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


# --------------------------------------------------------------------------------------------- helpers
def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, numerically stable in value *and* gradient.

    Mächler (2012), "Accurately Computing log(1 - exp(-|a|))": use ``log(-expm1(x))`` for
    ``x >= -ln 2`` and ``log1p(-exp(x))`` below. This is the same branch rule as
    ``trl.experimental.orpo.orpo_trainer.log1mexp`` (identical values for ``x < 0``), with two fixes:

    * TRL evaluates both branches and selects with ``torch.where``; the unselected branch is ``-inf``
      near 0 (``log1p(-exp(-1e-8))`` with ``exp`` rounding to 1), and its masked gradient
      (``0 * inf``) is NaN. Here each branch only ever sees inputs from its own range.
    * ``x`` is clamped to ``<= -1e-20``, so ``x = 0`` gives ``log(1e-20) ≈ -46.05`` rather than
      ``-inf`` (TRL) and positive inputs (invalid log-probs) give the same instead of NaN.

    Computed in float32; returned in ``x``'s dtype.
    """
    out_dtype = _out_dtype(x)
    x32 = x.to(torch.float32).clamp(max=-_TINY)
    near_zero = x32 >= -_LN2  # same split as TRL: x < -ln2 → log1p branch
    # feed each branch a safe dummy (-1.0 is inside both ranges' valid domain) where it is not selected
    x_near = torch.where(near_zero, x32, torch.full_like(x32, -1.0))
    x_far = torch.where(near_zero, torch.full_like(x32, -1.0), x32)
    out = torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))
    return out.to(out_dtype)


def average_logps(summed_logps: torch.Tensor, lengths) -> torch.Tensor:
    """Per-token average log-prob ``sum / max(length, 1)`` in float32 (ORPO's and SimPO's ``p``)."""
    return summed_logps.to(torch.float32) / _lengths(lengths, summed_logps)


def orpo_log_odds(avg_chosen: torch.Tensor, avg_rejected: torch.Tensor) -> torch.Tensor:
    """ORPO's log odds ratio ``log[odds(y_w) / odds(y_l)]`` from *average* log-probs ``p``:
    ``(p_w - p_l) - (log1mexp(p_w) - log1mexp(p_l))`` (float32). Used by :func:`orpo_loss` and by
    metrics (TRL logs its mean as ``log_odds_chosen``)."""
    pw = avg_chosen.to(torch.float32)
    pl = avg_rejected.to(torch.float32)
    return (pw - pl) - (log1mexp(pw) - log1mexp(pl))


def kto_reference_point(kl) -> torch.Tensor:
    """KTO's reference point ``z0 = max(0, KL estimate)``, detached (no gradient flows into it)."""
    if isinstance(kl, torch.Tensor):
        return kl.detach().to(torch.float32).clamp(min=0.0)
    return torch.tensor(max(0.0, float(kl)), dtype=torch.float32)


# --------------------------------------------------------------------------------------------- DPO
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""DPO (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7) and conservative DPO (cDPO).

    ``L = -(1-ε)·ls(β·h) - ε·ls(-β·h)`` with ``h = [lp(y_w) - lp_ref(y_w)] - [lp(y_l) - lp_ref(y_l)]``
    over **summed** log-probs. ``ε = label_smoothing`` is the probability that a preference label is
    flipped (cDPO; Mitchell 2023, "A note on DPO with noisy preferences"); ``ε = 0`` is plain DPO.

    Reference implementation: eric-mitchell/direct-preference-optimization ``trainers.py``
    ``preference_loss``: ``-F.logsigmoid(beta * logits) * (1 - label_smoothing)
    - F.logsigmoid(-beta * logits) * label_smoothing``; HALOs ``CDPOTrainer``.

    TRL 1.16 ``DPOTrainer(loss_type="sigmoid")`` computes only ``-ls(β·h)`` and ignores
    ``label_smoothing`` (``trl/trainer/dpo_trainer.py`` ``_compute_loss``); its ``robust`` loss is a
    different estimator (Chowdhury et al. 2024). With ``ε = 0`` this function equals TRL's sigmoid
    loss exactly (same operations in the same order).

    Returns the per-example loss, shape ``(batch,)``, in ``policy_chosen_logps``' dtype.
    """
    out_dtype = _out_dtype(policy_chosen_logps)
    pc, pr = policy_chosen_logps.to(torch.float32), policy_rejected_logps.to(torch.float32)
    rc, rr = _f32(ref_chosen_logps, pc), _f32(ref_rejected_logps, pc)
    h = (pc - rc) - (pr - rr)
    logits = beta * h
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        losses = losses * (1.0 - label_smoothing) - label_smoothing * F.logsigmoid(-logits)
    return losses.to(out_dtype)


# --------------------------------------------------------------------------------------------- IPO
def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths,
    rejected_lengths,
    tau: float = 0.1,
    length_normalize: bool = True,
) -> torch.Tensor:
    r"""IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17): ``L = (h - 1/(2τ))²``.

    * ``length_normalize=True`` (prefopt default, TRL and HALOs form): each side's log-ratio is divided
      by its completion length first, ``h = (lp_w - lp_ref_w)/|y_w| - (lp_l - lp_ref_l)/|y_l|``.
      TRL 1.16 ``DPOTrainer(loss_type="ipo")`` (β plays τ) divides by
      ``completion_mask.sum(dim=1).clamp(min=1.0)``; lengths here are clamped the same way. TRL's
      code comment says the IPO authors confirmed this averaged form.
    * ``length_normalize=False``: summed log-ratios, the paper's reference code.

    Reference implementations: eric-mitchell/direct-preference-optimization ``trainers.py``
    ``preference_loss(ipo=True)``: ``(logits - 1/(2*beta))**2`` with sequence-summed log-probs;
    ContextualAI/HALOs and TRL 1.16 ``_compute_loss`` (``trl/trainer/dpo_trainer.py``) average.

    Same τ, very different losses: the summed ``h`` is roughly ``|y|`` times the averaged one.
    Returns the per-example loss, shape ``(batch,)``, in ``policy_chosen_logps``' dtype.
    """
    out_dtype = _out_dtype(policy_chosen_logps)
    pc, pr = policy_chosen_logps.to(torch.float32), policy_rejected_logps.to(torch.float32)
    chosen_scores = pc - _f32(ref_chosen_logps, pc)
    rejected_scores = pr - _f32(ref_rejected_logps, pc)
    if length_normalize:
        chosen_scores = chosen_scores / _lengths(chosen_lengths, pc)
        rejected_scores = rejected_scores / _lengths(rejected_lengths, pc)
    h = chosen_scores - rejected_scores
    return ((h - 1 / (2 * tau)) ** 2).to(out_dtype)


# --------------------------------------------------------------------------------------------- KTO
def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    labels: torch.Tensor,
    kl,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    r"""KTO (Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 7-8) — unpaired.

    With ``r = lp(y) - lp_ref(y)`` (summed) and reference point ``z0 = max(0, kl)`` (detached):

    * desirable (``labels`` True):    ``L = λ_D · (1 - σ(β·(r - z0)))``
    * undesirable (``labels`` False): ``L = λ_U · (1 - σ(β·(z0 - r)))``

    ``kl`` is the KL estimate **before** clamping: the mean policy/reference log-ratio of mismatched
    (prompt_i, completion_j) pairs in the batch (TRL: ``(KL_logps - ref_KL_logps).mean()``, then the
    mean over processes; see docs/losses.md for how HALOs aggregates). This function clamps it at 0 and
    detaches it, as TRL and HALOs do. Note the ``1 - σ`` form (not ``-log σ``).

    Reference implementations: ContextualAI/HALOs ``KTOTrainer.loss``; TRL 1.16
    ``KTOTrainer._compute_loss`` (``trl/trainer/kto_trainer.py``), which returns desirable losses first
    and undesirable second — this function keeps the input order (same mean).

    Returns the per-example loss, shape ``(batch,)``, in ``policy_logps``' dtype.
    """
    out_dtype = _out_dtype(policy_logps)
    p = policy_logps.to(torch.float32)
    r = p - _f32(ref_logps, p)
    z0 = kto_reference_point(kl).to(p.device)
    desirable = torch.as_tensor(labels, device=p.device).to(torch.bool)
    chosen_losses = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    rejected_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable, chosen_losses, rejected_losses).to(out_dtype)


# --------------------------------------------------------------------------------------------- ORPO
def orpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths,
    rejected_lengths,
    lam: float = 0.1,
    nll: torch.Tensor | float | None = None,
) -> torch.Tensor:
    r"""ORPO (Hong et al. 2024, arXiv:2403.07691, Eq. 6-7): ``L = NLL - λ·ls(log_odds)``.

    Inputs are **summed** completion log-probs; ``p = sum/length`` is the per-token average and
    ``log_odds = (p_w - p_l) - (log(1-e^{p_w}) - log(1-e^{p_l}))`` (:func:`orpo_log_odds`, with the
    stable :func:`log1mexp`; the naive ``log1p(-exp(p))`` is ``-inf``/NaN as ``p → 0``).

    ``nll`` is the SFT term. Default: the chosen completion's mean token NLL ``-p_w`` (the paper's
    ``L_SFT`` over the response). TRL 1.16 ``ORPOTrainer.concatenated_forward`` instead uses one
    batch-level token-mean cross-entropy over the chosen *prompt and completion* tokens (EOS included);
    the reference code (xfactlab/orpo, ``disable_prompt_loss=False`` by default) uses the HF model loss
    over prompt+response with pad=EOS tokens masked. For parity with a trainer pass its NLL (a scalar
    broadcasts; the batch mean is then ``nll - λ·mean(ls(log_odds))``, exactly TRL's loss).

    Reference implementations: xfactlab/orpo ``src/orpo_trainer.py`` ``compute_loss``; TRL 1.16
    ``trl/experimental/orpo/orpo_trainer.py`` ``odds_ratio_loss`` (``beta`` = λ).
    Returns the per-example loss, shape ``(batch,)``, in ``policy_chosen_logps``' dtype.
    """
    out_dtype = _out_dtype(policy_chosen_logps)
    pw = average_logps(policy_chosen_logps, chosen_lengths)
    pl = average_logps(policy_rejected_logps, rejected_lengths)
    ratio = F.logsigmoid(orpo_log_odds(pw, pl))
    sft = -pw if nll is None else _f32(nll, pw)
    return (sft - lam * ratio).to(out_dtype)


# --------------------------------------------------------------------------------------------- SimPO
def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    chosen_lengths,
    rejected_lengths,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.5,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""SimPO (Meng et al. 2024, arXiv:2405.14734, Eq. 6), no reference model.

    ``L = -(1-ε)·ls(β·Δ - γ) - ε·ls(-(β·Δ - γ))`` with ``Δ = lp(y_w)/|y_w| - lp(y_l)/|y_l|`` (inputs
    are **summed** log-probs, averaged here) and ``γ = β · gamma_beta_ratio``.

    Reference implementation: princeton-nlp/SimPO ``scripts/simpo_trainer.py`` ``simpo_loss``:
    ``logits = pi_logratios - gamma_beta_ratio``; ``-F.logsigmoid(beta * logits) * (1 - ls)
    - F.logsigmoid(-beta * logits) * ls`` (its ``sft_weight`` is 0 in every published config).
    TRL 1.16 ``trl.experimental.cpo.CPOTrainer(loss_type="simpo")`` computes the same with an
    *absolute* ``simpo_gamma`` (``logits - simpo_gamma/beta``) and adds ``cpo_alpha·NLL`` (default
    ``cpo_alpha=1.0``: CPO-SimPO). With ``cpo_alpha=0`` and ``simpo_gamma = β·gamma_beta_ratio`` it
    equals this function.

    Returns the per-example loss, shape ``(batch,)``, in ``policy_chosen_logps``' dtype.
    """
    out_dtype = _out_dtype(policy_chosen_logps)
    delta = average_logps(policy_chosen_logps, chosen_lengths) - average_logps(
        policy_rejected_logps, rejected_lengths
    )
    logits = beta * (delta - gamma_beta_ratio)  # = β·Δ - γ
    losses = -F.logsigmoid(logits)
    if label_smoothing:
        losses = losses * (1.0 - label_smoothing) - label_smoothing * F.logsigmoid(-logits)
    return losses.to(out_dtype)


def bradley_terry_loss(
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    margin: torch.Tensor | float = 0.0,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    r"""Per-pair Bradley-Terry reward-model loss (``algorithm: reward``).

    Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155), Eq. 1; the margin is Touvron et al. 2023
    (Llama 2, arXiv:2307.09288), Eq. 2; the centring term Eisenstein et al. 2023 (arXiv:2312.09244)::

        L = −log σ(r_w − r_l − m) + η·(r_w + r_l)²

    with ``m`` the pair's margin (0 without one) and η = ``center_rewards_coefficient`` (no term when
    None). Reference implementation: TRL 1.16 ``RewardTrainer.compute_loss``
    (``trl/trainer/reward_trainer.py``), which averages the first term over the batch and adds η times the
    batch mean of (r_w + r_l)², so the batch means agree."""
    loss = -F.logsigmoid(rewards_chosen - rewards_rejected - margin)
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * (rewards_chosen + rewards_rejected) ** 2
    return loss
