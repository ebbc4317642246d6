"""prefopt.training.losses: hand-computed values, limits, numerics, and parity with TRL 1.16's own loss code.

Where TRL's loss lives inside a trainer method, the method is called unbound on a stub ``self``
(``types.SimpleNamespace``) and a stub model whose per-token log-prob depends only on the token id,
so TRL's real code runs without building a model. That covers DPOTrainer._compute_loss (sigmoid,
robust, ipo), KTOTrainer._compute_loss, ORPOTrainer.odds_ratio_loss and CPOTrainer.cpo_loss.
"""

from __future__ import annotations

import math
import os
import types
import warnings
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from prefopt.training import losses
from prefopt.training.algorithms import LOSS_FUNCTIONS
from prefopt.training.losses import (
    average_logps,
    dpo_loss,
    ipo_loss,
    kto_loss,
    log1mexp,
    orpo_log_odds,
    orpo_loss,
    simpo_loss,
)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl import DPOTrainer, KTOTrainer
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer
    from trl.experimental.orpo.orpo_trainer import log1mexp as trl_log1mexp


def t(values, dtype=torch.float32, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def softplus(x: float) -> float:
    """-log σ(x) = log(1 + e^{-x})"""
    return math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def close(actual: torch.Tensor, expected, rtol=1e-6, atol=1e-7):
    torch.testing.assert_close(
        actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=rtol, atol=atol
    )


# ============================================================================================ TRL stubs
CPU = torch.device("cpu")


def _accelerator():
    return types.SimpleNamespace(device=CPU, gather_for_metrics=lambda x: x, gather=lambda x: x)


class TokenTableModel:
    """Stands in for a causal LM with TRL's fused LM head: the log-prob of predicting token ``v`` is
    ``table[v]`` wherever the label is not -100 (TRL's fused head returns 0 at masked positions)."""

    def __init__(self, table: torch.Tensor):
        self.table = table
        self.training = True

    def __call__(self, input_ids, attention_mask=None, labels=None, **kwargs):
        target = input_ids[:, 1:]
        mask = labels[:, 1:] != -100
        log_probs = torch.where(mask, self.table[target], torch.zeros((), dtype=self.table.dtype))
        zeros = torch.zeros_like(log_probs).detach()
        return types.SimpleNamespace(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=torch.zeros_like(mask)
        )


TABLE = t([-0.5, -1.0, -2.0, -0.25, -3.0, -0.125, -1.5, -0.75])
PAD = 0


def _rows(prompt: list[int], completions: list[list[int]]):
    """Right-padded input_ids / attention_mask / completion_mask for prompt+completion rows."""
    width = max(len(prompt) + len(c) for c in completions)
    ids, att, comp = [], [], []
    for c in completions:
        seq = prompt + c
        pad = width - len(seq)
        ids.append(seq + [PAD] * pad)
        att.append([1] * len(seq) + [0] * pad)
        comp.append([0] * len(prompt) + [1] * len(c) + [0] * pad)
    return torch.tensor(ids), torch.tensor(att), torch.tensor(comp)


def _summed(completion: list[int], table=TABLE) -> float:
    return float(sum(table[v].item() for v in completion))


PROMPT = [1, 2]
CHOSEN = [[3, 5, 3], [6, 1], [7, 7, 7, 7]]
REJECTED = [[4, 2], [2, 4, 6, 1, 1], [5]]
REF_CHOSEN = [-1.2, -2.0, -4.0]
REF_REJECTED = [-4.5, -8.0, -0.5]


def trl_dpo_loss(loss_type: str, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """TRL 1.16's DPOTrainer._compute_loss, run for real on the fixed batch above."""
    model = TokenTableModel(TABLE)
    input_ids, attention_mask, completion_mask = _rows(PROMPT, CHOSEN + REJECTED)
    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "ref_chosen_logps": t(REF_CHOSEN),
        "ref_rejected_logps": t(REF_REJECTED),
    }
    stub = types.SimpleNamespace(
        model=model,
        accelerator=_accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        args=types.SimpleNamespace(),
    )
    return DPOTrainer._compute_loss(stub, model, inputs, False)


def batch_logps():
    pc = t([_summed(c) for c in CHOSEN])
    pr = t([_summed(c) for c in REJECTED])
    lc = torch.tensor([len(c) for c in CHOSEN])
    lr = torch.tensor([len(c) for c in REJECTED])
    return pc, pr, t(REF_CHOSEN), t(REF_REJECTED), lc, lr


# ============================================================================================ DPO / cDPO
def test_dpo_hand_computed():
    # h = [lp_w - ref_w] - [lp_l - ref_l]
    h0 = (-1.0 - -1.5) - (-2.0 - -1.5)  # = 1.0
    h1 = (-3.0 - -2.0) - (-1.0 - -1.5)  # = -1.5
    beta = 0.1
    out = dpo_loss(t([-1.0, -3.0]), t([-2.0, -1.0]), t([-1.5, -2.0]), t([-1.5, -1.5]), beta=beta)
    assert out.shape == (2,)
    close(out, [softplus(beta * h0), softplus(beta * h1)])
    close(out, [math.log(1 + math.exp(-0.1)), math.log(1 + math.exp(0.15))])


def test_cdpo_hand_computed():
    eps, beta = 0.2, 0.1
    x0, x1 = beta * 1.0, beta * -1.5
    out = dpo_loss(
        t([-1.0, -3.0]), t([-2.0, -1.0]), t([-1.5, -2.0]), t([-1.5, -1.5]), beta=beta, label_smoothing=eps
    )
    expected = [(1 - eps) * softplus(x) + eps * softplus(-x) for x in (x0, x1)]
    close(out, expected)
    close(
        out,
        [
            0.8 * math.log(1 + math.exp(-0.1)) + 0.2 * math.log(1 + math.exp(0.1)),
            0.8 * math.log(1 + math.exp(0.15)) + 0.2 * math.log(1 + math.exp(-0.15)),
        ],
    )


def test_cdpo_eps0_is_plain_dpo_exactly():
    pc, pr, rc, rr, _, _ = batch_logps()
    plain = -F.logsigmoid(0.3 * ((pc - rc) - (pr - rr)))
    assert torch.equal(dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=0.0), plain)


def test_cdpo_identities():
    pc, pr, rc, rr, _, _ = batch_logps()
    beta, eps = 0.25, 0.15
    h = (pc - rc) - (pr - rr)
    base = dpo_loss(pc, pr, rc, rr, beta=beta)
    smooth = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    # mixture of the loss on the label and on the flipped label
    flipped = dpo_loss(pr, pc, rr, rc, beta=beta)
    torch.testing.assert_close(smooth, (1 - eps) * base + eps * flipped)
    # since ls(x) - ls(-x) = x:  L_ε(h) = L_0(h) + ε·β·h
    torch.testing.assert_close(smooth, base + eps * beta * h)
    # symmetric: swapping chosen/rejected and ε ↔ 1-ε gives the same loss
    torch.testing.assert_close(smooth, dpo_loss(pr, pc, rr, rc, beta=beta, label_smoothing=1 - eps))
    # at ε = 1/2 the loss cannot tell chosen from rejected
    torch.testing.assert_close(
        dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=0.5),
        dpo_loss(pr, pc, rr, rc, beta=beta, label_smoothing=0.5),
    )


def test_trl_sigmoid_equals_dpo_and_ignores_label_smoothing():
    pc, pr, rc, rr, _, _ = batch_logps()
    ours = dpo_loss(pc, pr, rc, rr, beta=0.1).mean()
    assert torch.equal(trl_dpo_loss("sigmoid", beta=0.1), ours)  # bitwise: same ops, same order
    # TRL's sigmoid with label_smoothing=0.2 is still plain DPO — cDPO is silently dropped
    trl_smoothed = trl_dpo_loss("sigmoid", beta=0.1, label_smoothing=0.2)
    assert torch.equal(trl_smoothed, ours)
    cdpo = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.2).mean()
    assert abs(trl_smoothed.item() - cdpo.item()) > 1e-3


def test_trl_robust_is_not_cdpo():
    pc, pr, rc, rr, _, _ = batch_logps()
    beta, eps = 0.1, 0.2
    x = beta * ((pc - rc) - (pr - rr))
    robust = trl_dpo_loss("robust", beta=beta, label_smoothing=eps)
    # Robust DPO (Chowdhury et al. 2024): [-(1-ε)·ls(x) + ε·ls(-x)] / (1-2ε)
    torch.testing.assert_close(
        robust, ((-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)).mean()
    )
    cdpo = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps).mean()
    assert abs(robust.item() - cdpo.item()) > 1e-2
    # per example, with x = β·h and ls(-x) = ls(x) - x:
    #   robust = L_0 - ε·x/(1-2ε)     cDPO = L_0 + ε·x      → equal only where h = 0
    base = dpo_loss(pc, pr, rc, rr, beta=beta)
    per_robust = (-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)
    torch.testing.assert_close(per_robust, base - eps * x / (1 - 2 * eps))
    per_cdpo = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    torch.testing.assert_close(per_cdpo, base + eps * x)
    assert ((per_robust - per_cdpo).abs() > 1e-3).sum() == (x.abs() > 1e-3).sum() == 2


# ============================================================================================ IPO
def test_ipo_hand_computed_averaged_and_summed():
    tau = 0.1  # 1/(2τ) = 5
    args = (
        t([-4.0, -2.0]),
        t([-9.0, -2.0]),
        t([-5.0, -2.0]),
        t([-6.0, -2.0]),
        torch.tensor([2, 4]),
        torch.tensor([3, 1]),
    )
    # averaged: (-4+5)/2 - (-9+6)/3 = 0.5 + 1.0 = 1.5 → (1.5 - 5)² = 12.25 ; second pair h = 0 → 25
    close(ipo_loss(*args, tau=tau), [(0.5 - (-1.0) - 5) ** 2, 25.0])
    close(ipo_loss(*args, tau=tau), [12.25, 25.0])
    # summed: (-4+5) - (-9+6) = 4 → (4 - 5)² = 1
    close(ipo_loss(*args, tau=tau, length_normalize=False), [1.0, 25.0])


def test_ipo_summed_vs_averaged_is_exactly_the_length_division():
    pc, pr, rc, rr, lc, lr = batch_logps()
    averaged = ipo_loss(pc, pr, rc, rr, lc, lr, tau=0.05)
    pre_divided = ipo_loss(pc / lc, pr / lr, rc / lc, rr / lr, lc, lr, tau=0.05, length_normalize=False)
    torch.testing.assert_close(averaged, pre_divided)
    # equal lengths L: h_avg = h_sum / L
    L = 4
    lengths = torch.full((3,), L)
    h_sum = (pc - rc) - (pr - rr)
    torch.testing.assert_close(ipo_loss(pc, pr, rc, rr, lengths, lengths, tau=0.05), (h_sum / L - 10.0) ** 2)
    torch.testing.assert_close(
        ipo_loss(pc, pr, rc, rr, 7, 7, tau=0.05, length_normalize=False), (h_sum - 10.0) ** 2
    )


def test_ipo_zero_length_is_clamped_to_one_like_trl():
    out = ipo_loss(t([-1.0]), t([-2.0]), t([0.0]), t([0.0]), torch.tensor([0]), torch.tensor([0]), tau=0.5)
    close(out, [((-1.0) - (-2.0) - 1.0) ** 2])


def test_trl_ipo_equals_averaged_ipo():
    pc, pr, rc, rr, lc, lr = batch_logps()
    trl = trl_dpo_loss("ipo", beta=0.1)  # TRL's beta is τ
    torch.testing.assert_close(trl, ipo_loss(pc, pr, rc, rr, lc, lr, tau=0.1).mean())
    summed = ipo_loss(pc, pr, rc, rr, lc, lr, tau=0.1, length_normalize=False).mean()
    assert abs(trl.item() - summed.item()) > 1.0


# ============================================================================================ KTO
def _kto_hand(policy, ref, labels, kl, beta, wd, wu):
    z0 = max(0.0, kl)
    out = []
    for p, r, lab in zip(policy, ref, labels):
        rr = p - r
        out.append(wd * (1 - sigmoid(beta * (rr - z0))) if lab else wu * (1 - sigmoid(beta * (z0 - rr))))
    return out


def test_kto_hand_computed_mixed_batch():
    # r = [1.0, -1.0, 0.5], z0 = 0.3
    out = kto_loss(
        t([-3.0, -5.0, -2.0]),
        t([-4.0, -4.0, -2.5]),
        torch.tensor([True, False, True]),
        torch.tensor(0.3),
        beta=0.1,
    )
    close(out, [1 - sigmoid(0.1 * 0.7), 1 - sigmoid(0.1 * 1.3), 1 - sigmoid(0.1 * 0.2)])
    close(out, [1 - 1 / (1 + math.exp(-0.07)), 1 - 1 / (1 + math.exp(-0.13)), 1 - 1 / (1 + math.exp(-0.02))])


def test_kto_weights():
    args = (t([-3.0, -5.0, -2.0]), t([-4.0, -4.0, -2.5]), [True, False, True], 0.3)
    plain = kto_loss(*args, beta=0.1)
    weighted = kto_loss(*args, beta=0.1, desirable_weight=1.5, undesirable_weight=0.5)
    torch.testing.assert_close(weighted, plain * t([1.5, 0.5, 1.5]))
    close(weighted, _kto_hand([-3.0, -5.0, -2.0], [-4.0, -4.0, -2.5], [1, 0, 1], 0.3, 0.1, 1.5, 0.5))


@pytest.mark.parametrize("desirable", [True, False])
def test_kto_single_class_batches(desirable):
    policy, ref = [-1.0, -2.0, -3.0, -4.0], [-1.5, -1.5, -3.5, -3.0]
    labels = [desirable] * 4
    out = kto_loss(t(policy), t(ref), labels, 0.2, beta=0.5, desirable_weight=2.0, undesirable_weight=3.0)
    close(out, _kto_hand(policy, ref, labels, 0.2, 0.5, 2.0, 3.0))
    w = 2.0 if desirable else 3.0
    sign = 1 if desirable else -1
    close(out, [w * (1 - sigmoid(sign * 0.5 * ((p - r) - 0.2))) for p, r in zip(policy, ref)])


def test_kto_negative_kl_is_clamped_to_zero():
    args = (t([-3.0, -5.0]), t([-4.0, -4.0]), [True, False])
    torch.testing.assert_close(kto_loss(*args, torch.tensor(-0.7)), kto_loss(*args, torch.tensor(0.0)))
    torch.testing.assert_close(kto_loss(*args, -0.7), kto_loss(*args, 0.0))
    assert not torch.equal(kto_loss(*args, 0.4), kto_loss(*args, 0.0))


def test_kto_kl_is_detached():
    policy = t([-3.0, -5.0, -2.0], grad=True)
    kl = torch.tensor(0.3, requires_grad=True)
    kto_loss(policy, t([-4.0, -4.0, -2.5]), [True, False, True], kl * 1.0).sum().backward()
    assert kl.grad is None
    assert policy.grad is not None and torch.isfinite(policy.grad).all()


def trl_kto(beta, wd, wu, labels, completions, kl_completions, ref, ref_kl):
    model = TokenTableModel(TABLE)
    input_ids, attention_mask, completion_mask = _rows(PROMPT, completions)
    kl_ids, kl_att, kl_comp = _rows(PROMPT, kl_completions)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": kl_att,
        "KL_completion_mask": kl_comp,
        "label": torch.tensor(labels),
        "ref_logps": t(ref),
        "ref_KL_logps": t(ref_kl),
    }
    stub = types.SimpleNamespace(
        model=model,
        accelerator=_accelerator(),
        calculate_KL=True,
        precompute_ref_logps=True,
        aux_loss_enabled=False,
        loss_type="kto",
        beta=beta,
        desirable_weight=wd,
        undesirable_weight=wu,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    stub._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, stub)
    return KTOTrainer._compute_loss(stub, model, batch, False)


@pytest.mark.parametrize(
    "labels, ref_kl",
    [
        ([True, False, True, False], [-6.0, -2.0, -5.0, -9.0]),  # KL estimate > 0
        ([True, False, True, False], [-1.0, -0.5, -1.0, -1.0]),  # KL estimate < 0 → clamped
        ([True, True, True, True], [-6.0, -2.0, -5.0, -9.0]),
        ([False, False, False, False], [-6.0, -2.0, -5.0, -9.0]),
    ],
)
def test_trl_kto_equals_kto_loss(labels, ref_kl):
    completions = [[3, 5], [4, 2, 2], [6], [7, 1, 3]]
    # TRL's mismatched pairs: completions rotated by one inside the batch
    kl_completions = [completions[-1]] + completions[:-1]
    ref = [-1.0, -9.0, -2.0, -4.0]
    trl = trl_kto(0.1, 1.33, 0.7, labels, completions, kl_completions, ref, ref_kl)
    policy = t([_summed(c) for c in completions])
    kl_est = (t([_summed(c) for c in kl_completions]) - t(ref_kl)).mean()
    ours = kto_loss(policy, t(ref), labels, kl_est, beta=0.1, desirable_weight=1.33, undesirable_weight=0.7)
    torch.testing.assert_close(trl, ours.mean())


# ============================================================================================ ORPO
def test_orpo_hand_computed():
    # p_w = -2/4 = -0.5, p_l = -3/2 = -1.5
    pw, pl, lam = -0.5, -1.5, 0.1
    log_odds = (pw - pl) - (math.log(1 - math.exp(pw)) - math.log(1 - math.exp(pl)))
    log_sig = -math.log1p(math.exp(-log_odds))
    out = orpo_loss(t([-2.0]), t([-3.0]), torch.tensor([4]), torch.tensor([2]), lam=lam)
    close(out, [-pw - lam * log_sig])  # default NLL = -p_w = 0.5
    close(orpo_log_odds(t([pw]), t([pl])), [log_odds])
    # explicit NLL (e.g. TRL's batch CE): broadcast scalar
    close(orpo_loss(t([-2.0]), t([-3.0]), 4, 2, lam=lam, nll=1.25), [1.25 - lam * log_sig])
    close(orpo_loss(t([-2.0]), t([-3.0]), 4, 2, lam=lam, nll=torch.tensor([0.0])), [-lam * log_sig])


def test_log1mexp_hand_values_and_trl_equality():
    xs = [-1e-6, -1e-3, -0.1, -0.5, -math.log(2), -0.7, -1.0, -5.0, -30.0, -100.0]
    close(log1mexp(t(xs)), [math.log(-math.expm1(x)) for x in xs], rtol=1e-6, atol=1e-12)
    x = -torch.logspace(-7, 3, 301)
    assert torch.equal(log1mexp(x), trl_log1mexp(x))  # same branch rule → identical float32 values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_log1mexp_at_zero_and_far_below(dtype):
    x = t([0.0, -0.0, -1e-8, -1e-20, -1e4, -1e5, 1e-3], dtype=dtype, grad=True)
    y = log1mexp(x)
    y.sum().backward()
    assert y.dtype == dtype
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert y[4].item() == 0.0 and y[5].item() == 0.0
    assert y[0].item() == pytest.approx(math.log(1e-20), rel=1e-2)


def test_trl_log1mexp_is_unstable_near_zero():
    """Why prefopt has its own log1mexp: TRL's gives -inf at 0 and NaN gradients near 0."""
    x = t([0.0, -1e-8], grad=True)
    y = trl_log1mexp(x)
    y.sum().backward()
    assert torch.isinf(y[0]) and torch.isnan(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orpo_stable_near_zero_and_far_below(dtype):
    # lengths 1 so the averages are the inputs themselves
    chosen = t([-1e-8, 0.0, 0.0, -1e4, -2e4, -1e-8, -3.0], dtype=dtype, grad=True)
    rejected = t([0.0, -1e-8, 0.0, -1e5, -3.0, -1e4, -1e-8], dtype=dtype, grad=True)
    out = orpo_loss(chosen, rejected, 1, 1, lam=0.5)
    out.sum().backward()
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    # equal odds → log σ(0) = -log 2
    assert out[2].float().item() == pytest.approx(0.0 + 0.5 * math.log(2), rel=1e-2)
    # far below: log1mexp ≈ 0, log_odds = p_w - p_l
    assert out[3].float().item() == pytest.approx(1e4 - 0.5 * -math.log1p(math.exp(-9e4)), rel=1e-2)


def test_trl_orpo_odds_ratio_equals_orpo_loss():
    stub = types.SimpleNamespace(beta=0.25, accelerator=_accelerator())
    sums_w, sums_l = t([-2.0, -0.3, -40.0, -7.5]), t([-3.0, -9.0, -1.0, -7.5])
    len_w, len_l = torch.tensor([4, 3, 10, 5]), torch.tensor([2, 9, 1, 6])
    pw, pl = average_logps(sums_w, len_w), average_logps(sums_l, len_l)
    trl_losses, _, _, trl_mean_ratio, trl_mean_log_odds = ORPOTrainer.odds_ratio_loss(stub, pw, pl)
    ours = orpo_loss(sums_w, sums_l, len_w, len_l, lam=0.25, nll=0.0)
    torch.testing.assert_close(ours, -trl_losses)
    torch.testing.assert_close(orpo_log_odds(pw, pl).mean(), trl_mean_log_odds)
    # TRL's batch loss: policy_nll_loss - losses.mean(), with one scalar NLL for the batch
    nll = torch.tensor(1.7)
    torch.testing.assert_close(
        orpo_loss(sums_w, sums_l, len_w, len_l, lam=0.25, nll=nll).mean(), nll - trl_losses.mean()
    )


# ============================================================================================ SimPO
def test_simpo_hand_computed():
    # avg_w = -3/3 = -1, avg_l = -8/4 = -2, Δ = 1; β = 2, γ = β·0.5 = 1 → logits = 2·1 - 1 = 1
    out = simpo_loss(
        t([-3.0]), t([-8.0]), torch.tensor([3]), torch.tensor([4]), beta=2.0, gamma_beta_ratio=0.5
    )
    close(out, [math.log(1 + math.exp(-1.0))])
    smooth = simpo_loss(t([-3.0]), t([-8.0]), 3, 4, beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.1)
    close(smooth, [0.9 * math.log(1 + math.exp(-1.0)) + 0.1 * math.log(1 + math.exp(1.0))])


def _trl_cpo_stub(beta, simpo_gamma, label_smoothing):
    return types.SimpleNamespace(
        alpha=0.0,
        loss_type="simpo",
        beta=beta,
        simpo_gamma=simpo_gamma,
        label_smoothing=label_smoothing,
        accelerator=_accelerator(),
    )


@pytest.mark.parametrize(
    "beta, ratio, eps", [(2.0, 0.5, 0.0), (2.5, 0.55, 0.0), (10.0, 0.3, 0.1), (2.0, 0.8, 0.2)]
)
def test_trl_cpo_simpo_equals_simpo_loss(beta, ratio, eps):
    sums_w, sums_l = t([-3.0, -12.0, -0.5, -40.0]), t([-8.0, -2.0, -6.0, -39.0])
    len_w, len_l = torch.tensor([3, 7, 2, 20]), torch.tensor([4, 1, 5, 19])
    stub = _trl_cpo_stub(beta, beta * ratio, eps)  # prefopt's mapping: simpo_gamma = β·γ/β
    trl_losses, _, _ = CPOTrainer.cpo_loss(stub, average_logps(sums_w, len_w), average_logps(sums_l, len_l))
    ours = simpo_loss(sums_w, sums_l, len_w, len_l, beta=beta, gamma_beta_ratio=ratio, label_smoothing=eps)
    torch.testing.assert_close(ours, trl_losses)


def test_trl_cpo_defaults_mean_gamma_beta_ratio_5():
    sums_w, sums_l, lens = t([-3.0, -1.0]), t([-8.0, -2.0]), torch.tensor([3, 2])
    p = average_logps
    trl_default, _, _ = CPOTrainer.cpo_loss(_trl_cpo_stub(0.1, 0.5, 0.0), p(sums_w, lens), p(sums_l, lens))
    torch.testing.assert_close(
        trl_default, simpo_loss(sums_w, sums_l, lens, lens, beta=0.1, gamma_beta_ratio=5.0)
    )
    assert not torch.allclose(
        trl_default, simpo_loss(sums_w, sums_l, lens, lens, beta=0.1, gamma_beta_ratio=0.5)
    )


# ============================================================================================ all losses
def _call(name, dtype, values_w, values_l, grad=True):
    pc, pr = t(values_w, dtype, grad), t(values_l, dtype, grad)
    n = len(values_w)
    rc, rr = t([-1.0] * n, dtype), t([-2.0] * n, dtype)
    lens = torch.arange(1, n + 1)
    if name == "dpo":
        out = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1)
    elif name == "ipo":
        out = ipo_loss(pc, pr, rc, rr, lens, lens.flip(0), tau=0.1) + ipo_loss(
            pc, pr, rc, rr, lens, lens, tau=0.1, length_normalize=False
        )
    elif name == "kto":
        labels = torch.arange(n) % 2 == 0
        out = kto_loss(pc, rc, labels, torch.tensor(0.5), beta=0.1) + kto_loss(pr, rr, ~labels, -3.0)
    elif name == "orpo":
        out = orpo_loss(pc, pr, lens, lens.flip(0), lam=0.1)
    else:
        out = simpo_loss(pc, pr, lens, lens.flip(0), beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.1)
    return out, pc, pr


EXTREME_W = [-1e-8, 0.0, 0.0, -1e4, -2e4, -1e-8, -3.0, -1e6]
EXTREME_L = [0.0, -1e-8, 0.0, -1e5, -3.0, -1e4, -1e-8, -1e6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(LOSS_FUNCTIONS))
def test_every_loss_finite_with_finite_gradients(name, dtype):
    if dtype == torch.float16:  # float16 cannot hold -1e5/-1e6 inputs; test its own range
        w, lo = [v for v in EXTREME_W if v > -6e4], [v for v in EXTREME_L if v > -6e4]
        n = min(len(w), len(lo))
        w, lo = w[:n], lo[:n]
    else:
        w, lo = EXTREME_W, EXTREME_L
    out, pc, pr = _call(name, dtype, w, lo)
    assert out.shape == (len(w),)
    assert out.dtype == dtype
    if not (name == "ipo" and dtype == torch.float16):  # (1e4)² overflows float16's range by design
        assert torch.isfinite(out).all(), out
    out.float().sum().backward()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


@pytest.mark.parametrize("name", sorted(LOSS_FUNCTIONS))
def test_bfloat16_matches_float32_on_representable_inputs(name):
    w, lo = [-1.0, -2.5, -0.5, -8.0], [-3.0, -0.75, -0.5, -16.0]  # exact in bfloat16
    out16, _, _ = _call(name, torch.bfloat16, w, lo, grad=False)
    out32, _, _ = _call(name, torch.float32, w, lo, grad=False)
    torch.testing.assert_close(out16.float(), out32, rtol=1e-2, atol=1e-2)


def test_loss_functions_registry_and_exports():
    assert LOSS_FUNCTIONS == {
        "dpo": dpo_loss,
        "ipo": ipo_loss,
        "kto": kto_loss,
        "orpo": orpo_loss,
        "simpo": simpo_loss,
        "online_dpo": dpo_loss,  # DPO's loss on pairs sampled while training
        "reward": losses.bradley_terry_loss,
    }
    for name in losses.__all__:
        assert hasattr(losses, name)
    for fn in LOSS_FUNCTIONS.values():  # formula + citation + reference implementation documented
        doc = fn.__doc__
        assert "arXiv" in doc and "Reference implementation" in doc and "L =" in doc.replace("``", "")
