"""Parity: the loss each prefopt trainer actually optimises equals ``prefopt.training.losses`` on log-probs
computed independently here (issue 5, item 3).

For every algorithm (and each prefopt loss override) a trainer is built with
``prefopt.training.build.build_trainer`` on the builtin ``tiny-arith`` model. On the collated batch, in train mode,
``trainer.compute_loss(trainer.model, batch)`` is compared with a loss assembled independently:

* log-probs from a plain forward of each sequence on its own (no padding, no fused LM head):
  ``model(input_ids, attention_mask).logits`` → ``log_softmax`` → the log-prob of every next token;
* the prompt/completion split from ``encode_prompt`` / ``encode_completion`` (not from the batch);
* reference log-probs from a model built anew from the starting weights (not the trainer's ``ref_model``);
* the loss from :mod:`prefopt.training.losses`.

Every trainer's batch loss is a mean over examples (pairs), and one batch holds the whole data set, so the
comparison does not depend on the order in which the train sampler put the rows. The loss must agree
within 1e-5 and the gradient with respect to every policy parameter within 1e-5 × max |grad|.

The models. The starting model (= the reference) is tiny-arith after a short SFT on all completions, as a
preference run starts from an SFT model; the policy is the trainer's copy of it after two more SFT steps
on the chosen completions only (taken after the trainer made its reference copy). This gives non-zero
log-ratios of both signs, a positive KTO KL estimate (so KTO's reference point z0 is not clamped to 0)
and average log-probs on both sides of ORPO's log1mexp branch point (−ln 2). It also keeps summed
log-probs small: both sides compute in float32 (TRL's fused LM head accumulates in float32 whatever the
model dtype), and the rounding of a summed log-prob grows with its magnitude. With a randomly perturbed
untrained model instead (≈ −5.6 nats per token), summed IPO, (h − 1/(2τ))², missed the tolerances on
some perturbations (|Δloss| up to 1.3e-5, gradient up to 1.6e-5 relative, the same factor on every
parameter): float32 rounding of h (~1e-5 on sums of ~−70 nats) amplified by the square, not a formula
difference. Here every case agrees to ≤ 1e-6 in loss and ≤ 1e-6 relative in gradient.
"""

from __future__ import annotations

import functools

import pytest
import torch
from datasets import Dataset

from prefopt.config.recipe import Recipe
from prefopt.data.tokenization import encode_completion, encode_prompt, tokenize_dataset
from prefopt.model.loading import build_builtin, load_tokenizer
from prefopt.training import losses
from prefopt.training.build import build_trainer

SEED = 0
LOSS_TOL = 1e-5
GRAD_RTOL = 1e-5

# Prompts of 6, 4 and 22 tokens; completions (EOS included) of 3/2, 2/3 and 4/6 tokens.
EXAMPLES = [
    {"prompt": "37+48=", "chosen": "85", "rejected": "8"},
    {"prompt": "2+2=", "chosen": "4", "rejected": "44"},
    {"prompt": "Q: what is 123+456? A:", "chosen": "579", "rejected": "5 7 9"},
]

CASES = [
    # (algorithm, recipe `loss:` section, whether PrefoptDPOTrainer swaps in prefopt's loss for TRL's)
    pytest.param("dpo", {"beta": 0.5}, False, id="dpo"),
    pytest.param("dpo", {"beta": 0.5, "label_smoothing": 0.2}, True, id="cdpo"),
    pytest.param("ipo", {"tau": 0.2}, False, id="ipo-averaged"),
    pytest.param("ipo", {"tau": 0.2, "length_normalize": False}, True, id="ipo-summed"),
    pytest.param("kto", {"beta": 0.5, "desirable_weight": 1.2, "undesirable_weight": 1.0}, None, id="kto"),
    pytest.param("orpo", {"lam": 0.5}, None, id="orpo"),
    pytest.param("orpo", {"lam": 0.5, "nll_on_prompt": True}, None, id="orpo-trl-nll"),
    pytest.param("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.5}, None, id="simpo"),
    pytest.param(
        "simpo", {"beta": 2.0, "gamma_beta_ratio": 0.5, "label_smoothing": 0.2}, None, id="simpo-ls"
    ),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unpaired(rows):
    """KTO rows in data set order: chosen (desirable) then rejected (undesirable) of each example."""
    out = []
    for r in rows:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


# ------------------------------------------------------------------------------------ independent log-probs
def _token_logps(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t = 1..len-1: one plain forward of this sequence alone."""
    input_ids = torch.tensor([ids])
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits[
        0, :-1
    ]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, input_ids[0, 1:].unsqueeze(-1)).squeeze(-1)


class _Seq:
    """One (prompt, completion): its token log-probs, summed completion log-prob and completion length."""

    def __init__(self, model, tok, prompt: str, completion: str):
        self.prompt_ids = encode_prompt(tok, prompt)
        self.completion_ids = encode_completion(tok, prompt, completion)
        assert self.prompt_ids and self.completion_ids
        ids = self.prompt_ids + self.completion_ids
        self.per_token = _token_logps(model, ids)  # index t-1 scores token t
        self.is_eos = torch.tensor(ids[1:]) == tok.eos_token_id
        self.completion_logp = self.per_token[
            len(self.prompt_ids) - 1 :
        ].sum()  # every completion token, EOS too
        self.length = len(self.completion_ids)


def _side(model, tok, rows, key, grad: bool):
    with torch.set_grad_enabled(grad):
        seqs = [_Seq(model, tok, r["prompt"], r[key]) for r in rows]
    return seqs, torch.stack([s.completion_logp for s in seqs]), torch.tensor([s.length for s in seqs])


def _kl_rows(rows):
    """prefopt's mismatched KTO pairs (prefopt.training.trainers.add_kl_completions): row i's prompt with the completion
    of row (i + n // 2) mod n, in data set order."""
    n = len(rows)
    return [
        {"prompt": r["prompt"], "completion": rows[(i + max(1, n // 2)) % n]["completion"]}
        for i, r in enumerate(rows)
    ]


def _independent_loss(algorithm: str, lp, policy, ref, tok) -> tuple[torch.Tensor, dict]:
    """The batch loss from prefopt.training.losses on independently computed log-probs, and its parts."""
    parts: dict = {}
    if algorithm == "kto":
        rows = _unpaired(EXAMPLES)
        _, pol, _ = _side(policy, tok, rows, "completion", grad=True)
        _, rf, _ = _side(ref, tok, rows, "completion", grad=False)
        # the KL estimate: mean (policy − ref) summed log-prob of the mismatched sequences over the batch (here
        # the whole data set); kto_loss clamps it at 0 and detaches it (z0).
        kl_rows = _kl_rows(rows)
        _, kl_pol, _ = _side(policy, tok, kl_rows, "completion", grad=False)
        _, kl_ref, _ = _side(ref, tok, kl_rows, "completion", grad=False)
        parts.update(kl=(kl_pol - kl_ref).mean(), logratios=pol.detach() - rf)
        labels = torch.tensor([r["label"] for r in rows])
        per_example = losses.kto_loss(
            pol,
            rf,
            labels,
            parts["kl"],
            beta=lp.beta,
            desirable_weight=lp.desirable_weight,
            undesirable_weight=lp.undesirable_weight,
        )
        return per_example.mean(), parts

    chosen, pc, lc = _side(policy, tok, EXAMPLES, "chosen", grad=True)
    _, pr, lr = _side(policy, tok, EXAMPLES, "rejected", grad=True)
    if algorithm in ("dpo", "ipo"):
        _, rc, _ = _side(ref, tok, EXAMPLES, "chosen", grad=False)
        _, rr, _ = _side(ref, tok, EXAMPLES, "rejected", grad=False)
        parts["logratios"] = torch.cat([pc.detach() - rc, pr.detach() - rr])
        if algorithm == "dpo":
            per_example = losses.dpo_loss(pc, pr, rc, rr, beta=lp.beta, label_smoothing=lp.label_smoothing)
        else:
            per_example = losses.ipo_loss(
                pc, pr, rc, rr, lc, lr, tau=lp.tau, length_normalize=lp.length_normalize
            )
    elif algorithm == "orpo":
        # TRL's SFT term (trl/experimental/orpo/orpo_trainer.py, concatenated_forward): nn.CrossEntropyLoss, a
        # token mean over the whole batch (not a mean of per-example means), over the *chosen* sequences, with
        # labels = input_ids where attention_mask == 1, shifted by one. Its token set is every real token of
        # prompt + chosen completion except each sequence's first (nothing predicts it): prompt tokens and EOS
        # included, padding excluded.
        all_tokens = torch.cat([s.per_token for s in chosen])
        avg_c, avg_r = losses.average_logps(pc, lc), losses.average_logps(pr, lr)
        # prefopt's default (nll_on_prompt false) is the paper's L_SFT: each chosen completion's mean token
        # NLL, averaged over the batch — orpo_loss's own default nll
        parts["nll"] = -all_tokens.mean() if lp.nll_on_prompt else -avg_c.mean()
        # two other token sets, to show the test pins TRL's down: the response only (the paper's L_SFT,
        # orpo_loss's default) and prompt + response without EOS (the reference code masks pad = EOS)
        parts["other_nlls"] = {
            "response only": -(pc.sum() / lc.sum()),
            "without EOS": -torch.cat([s.per_token[~s.is_eos] for s in chosen]).mean(),
        }
        parts["avg"] = torch.cat([avg_c, avg_r]).detach()
        parts["log_odds"] = losses.orpo_log_odds(avg_c, avg_r)
        parts["odds_term"] = losses.orpo_loss(
            pc, pr, lc, lr, lam=lp.lam, nll=0.0
        ).mean()  # −λ·mean(ls(log_odds))
        per_example = losses.orpo_loss(
            pc, pr, lc, lr, lam=lp.lam, nll=parts["nll"] if lp.nll_on_prompt else None
        )
    else:  # simpo: CPOTrainer averages over the completion tokens (average_log_prob=True for loss_type="simpo")
        per_example = losses.simpo_loss(
            pc,
            pr,
            lc,
            lr,
            beta=lp.beta,
            gamma_beta_ratio=lp.gamma_beta_ratio,
            label_smoothing=lp.label_smoothing,
        )
    return per_example.mean(), parts


# ------------------------------------------------------------------------------------ models
def _sft(model, tok, pairs, steps: int, lr: float) -> None:
    """A few deterministic Adam steps on the mean completion NLL of (prompt, completion) pairs."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        seqs = [_Seq(model, tok, p, c) for p, c in pairs]
        (-torch.stack([s.completion_logp for s in seqs]).sum() / sum(s.length for s in seqs)).backward()
        opt.step()
    model.zero_grad(set_to_none=True)


@functools.cache
def _starting_weights() -> dict[str, torch.Tensor]:
    tok = load_tokenizer("builtin:tiny-arith")
    model = build_builtin("tiny-arith", SEED)
    _sft(
        model, tok, [(e["prompt"], e[k]) for e in EXAMPLES for k in ("chosen", "rejected")], steps=20, lr=1e-2
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _starting_model():
    model = build_builtin("tiny-arith", SEED)
    model.load_state_dict(_starting_weights())
    return model


def _trainer(algorithm: str, loss: dict, tok, output_dir: str):
    kind = "unpaired" if algorithm == "kto" else "paired"
    rows = _unpaired(EXAMPLES) if kind == "unpaired" else EXAMPLES
    tokenized, _ = tokenize_dataset(Dataset.from_list(rows), kind, tok)
    recipe = Recipe(
        algorithm=algorithm,
        seed=SEED,
        model={"name": "builtin:tiny-arith"},
        data={"train": [{"source": "world"}]},
        loss=loss,
        # one batch holds the whole data set (for KTO: every mismatched KL pair, both labels)
        training={"per_device_train_batch_size": len(rows), "max_steps": 1, "disable_tqdm": True},
    )
    trainer = build_trainer(recipe, _starting_model(), tok, tokenized, None, output_dir=output_dir)
    return trainer, recipe.loss_params


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


# ------------------------------------------------------------------------------------ the test
@pytest.mark.parametrize(("algorithm", "loss", "override"), CASES)
def test_trainer_loss_and_gradients_match_prefopt_losses(algorithm, loss, override, tmp_path):
    tok = load_tokenizer("builtin:tiny-arith")
    trainer, lp = _trainer(algorithm, loss, tok, str(tmp_path))
    # which code computes the DPOTrainer loss: TRL's _compute_loss or prefopt's override
    if override is not None:
        assert (trainer.prefopt_loss is not None) is override
    policy = trainer.model
    # the policy moves away from the reference only now, after build_trainer took its reference copy
    _sft(policy, tok, [(e["prompt"], e["chosen"]) for e in EXAMPLES], steps=2, lr=1e-3)
    policy.train()
    assert policy.config.attention_dropout == 0
    assert all(m.p == 0 for m in policy.modules() if isinstance(m, torch.nn.Dropout))

    batch = next(iter(trainer.get_train_dataloader()))
    trainer_loss = trainer.compute_loss(policy, batch)
    trainer_loss.backward()
    trainer_grads = _grads(policy)

    ref = _starting_model().eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    ours, parts = _independent_loss(algorithm, lp, policy, ref, tok)
    ours.backward()
    our_grads = _grads(policy)

    # not degenerate: the policy differs from the reference on every sequence
    if "logratios" in parts:
        assert parts["logratios"].abs().min() > 1e-2, parts["logratios"]

    d_loss = abs(trainer_loss.item() - ours.item())
    assert trainer_grads.keys() == our_grads.keys() and trainer_grads
    d_grad = max((trainer_grads[n] - our_grads[n]).abs().max().item() for n in our_grads)
    scale = max(g.abs().max().item() for g in our_grads.values())
    print(
        f"\n[{algorithm} {loss}] loss: trainer {trainer_loss.item():.7f} independent {ours.item():.7f} "
        f"|Δ| {d_loss:.2e}; grad: max|Δ| {d_grad:.2e} max|grad| {scale:.2e} (rel {d_grad / scale:.2e})"
    )
    assert d_loss <= LOSS_TOL
    assert scale > 1e-4
    assert d_grad <= GRAD_RTOL * scale

    if algorithm == "kto":
        # the reference point is exercised (positive, not clamped) and equals TRL's (logged after clamping)
        assert parts["kl"] > 1e-2, f"KL estimate {parts['kl']:.4g}: z0 would be clamped to 0"
        assert abs(trainer._metrics["train"]["kl"][-1] - parts["kl"].item()) <= LOSS_TOL
    if algorithm == "orpo":
        # each term on its own, against TRL's logged metrics (from the same forward as its loss)
        m = trainer._stored_metrics["train"]
        assert abs(m["nll_loss"][-1] - parts["nll"].item()) <= LOSS_TOL
        assert abs(m["log_odds_chosen"][-1] - parts["log_odds"].mean().item()) <= LOSS_TOL
        # loss − NLL is orpo_loss's odds term with averaged completion log-probs: −λ·mean(ls(log_odds))
        assert abs((trainer_loss.item() - m["nll_loss"][-1]) - parts["odds_term"].item()) <= LOSS_TOL
        # both log1mexp branches are used (average log-prob above and below −ln 2)
        assert (parts["avg"] > -0.6931).any() and (parts["avg"] < -0.6931).any(), parts["avg"]
        if lp.nll_on_prompt:
            for name, other in parts["other_nlls"].items():
                assert abs(m["nll_loss"][-1] - other.item()) > 100 * LOSS_TOL, (
                    f"TRL's NLL token set is not '{name}'"
                )
