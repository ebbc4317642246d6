"""Online DPO: each step samples k replies per prompt from the *current* policy, a judge ranks them, and the
DPO (or IPO) loss is taken on the fresh best-vs-worst pairs; the reference is the starting model.

Why a prefopt trainer on ``trl.DPOTrainer`` and not ``trl.experimental.online_dpo.OnlineDPOTrainer``
(docs/losses.md, "Online DPO"): TRL's samples exactly two replies per prompt (k ≥ 2 is the point here),
re-tokenises text prompts with the chat template instead of prefopt's one tokenisation
(:mod:`prefopt.data.tokenization`), samples with ``model.generate`` from the global RNG (a resumed or a
2-process run draws different replies), breaks a tie towards the first reply (so equal scores still train),
and takes TRL's ``reward_funcs``/pairwise judges rather than prefopt's judges. This trainer keeps everything
of :class:`~prefopt.training.trainers.PrefoptDPOTrainer` — the pre-tokenised rows, TRL's forward with the
fused LM head, the reference (a separate copy, or the adapter-disabled base under LoRA) — and changes only
where the pairs come from:

1. **Sample** (:class:`~prefopt.model.engines.hf.TransformersEngine` on the policy being trained, unwrapped
   from DDP; under LoRA the PEFT model with its adapter active — the weights that train are the weights that
   generate). Each reply draws from its own stream seeded by (recipe seed, global step, micro-batch,
   prompt ids, sample index): the same replies after a resume and in any number of processes.
2. **Judge** every reply with the recipe's judge (any score judge: ``callable``, ``reward_model``,
   ``ensemble``, wrapped in the length penalty when ``online.length_penalty`` > 0). The prompt the judge
   sees is the prompt ids decoded without special tokens.
3. **Pair** the highest-scoring reply (first among equals) with the lowest-scoring one. A prompt whose
   scored replies all lie within the judge's ``tie_margin`` (or with fewer than two scores) gives no pair:
   it stays in the batch with weight 0, so every process runs the same forward and backward.
4. **Loss**: per pair, :func:`~prefopt.training.losses.dpo_loss` (``loss_type: sigmoid``) or
   :func:`~prefopt.training.losses.ipo_loss` (length-normalised as TRL's; the adapter passes it), averaged over the pairs
   of the *global* batch (each process scales by world size / global pair count, so 2 processes reproduce 1).

Logged each step (metrics.jsonl, averaged over ``logging_steps``): ``online/score`` (mean judge score of all
sampled replies), ``online/kl`` (the sampled estimate of KL(π‖π_ref): mean over the replies of
log π(y|x) − log π_ref(y|x), nats per sequence), ``online/length`` (mean reply length in tokens),
``online/ties`` (fraction of prompts without a pair), ``online/pairs``. ``online/kl`` feeds the health
``kl_high`` check, so ``online.kl_budget`` stops training when it passes the budget.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

import torch

from prefopt.core.errors import PrefoptError
from prefopt.model.engines.hf import TransformersEngine
from prefopt.model.logprobs import completion_logps
from prefopt.training import losses
from prefopt.training.health import ONLINE_KL
from prefopt.training.trainers import PrefoptDPOTrainer

WEIGHT = "online_weight"  # the batch key holding each pair's weight (0: a tie)


class PretokenizedEngine(TransformersEngine):
    """The transformers engine fed prompt ids as training holds them (no second tokenisation)."""

    def encode(self, prompt) -> list[int]:
        return [int(t) for t in prompt]


def step_seed(seed: int, step: int, micro: int) -> int:
    """The run seed of one micro-batch's samples (per-sample streams derive from it and the prompt ids)."""
    key = f"online|{int(seed)}|{int(step)}|{int(micro)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**62 - 1)


def best_and_worst(scores: Sequence[float | None], tie_margin: float = 0.0) -> tuple[int, int] | None:
    """Indices of the best and the worst scored reply (first among equals), or None for a tie."""
    scored = [(s, i) for i, s in enumerate(scores) if s is not None]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda x: (x[0], -x[1]))
    worst = min(scored, key=lambda x: (x[0], x[1]))
    if best[0] - worst[0] <= tie_margin:
        return None
    return best[1], worst[1]


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


class OnlineDPOTrainer(PrefoptDPOTrainer):
    """``trl.DPOTrainer`` on pairs sampled and judged at every step (see the module docstring).

    ``online`` is the recipe's :class:`prefopt.config.recipe.OnlineSection` (k, temperature,
    max_new_tokens, batch_size); ``judge`` a prefopt score judge (``judge.score(prompts, replies)``);
    ``prefopt_loss`` the per-pair loss (:data:`~prefopt.training.trainers.PrefoptLoss`; default DPO's sigmoid
    loss); ``online_seed`` the recipe seed. Prefix sharing and the split
    forward are off (pairs change every step; generation runs through the same model)."""

    def __init__(
        self,
        *args,
        online=None,
        judge=None,
        online_seed: int = 0,
        **kwargs,
    ):
        kwargs["prefix_sharing"] = False
        kwargs["split_forward"] = False
        super().__init__(*args, **kwargs)
        self.online = online
        self.judge = judge
        self.online_seed = int(online_seed)
        self.pair_collator = self.data_collator  # evaluation keeps it: the data's own pairs
        self._micro = (-1, 0)  # (global step, micro-batches sampled in it)
        self.last_samples: list[list[Any]] | None = None  # the latest step's completions (tests, debugging)

    # ------------------------------------------------------------------ sampling
    def engine(self, model) -> PretokenizedEngine:
        """The engine sampling this step: the policy being trained (unwrapped from DDP; a PEFT model as it
        trains, adapter active)."""
        return PretokenizedEngine(
            model,
            self.processing_class,
            batch_size=self.online.batch_size,
            length_grouped=True,
            progress=False,
        )

    def _seed_now(self) -> int:
        step, micro = self._micro
        step_now = self.state.global_step
        micro = micro + 1 if step == step_now else 0
        self._micro = (step_now, micro)
        return step_seed(self.online_seed, step_now, micro)

    def sample(self, model, prompt_ids: Sequence[Sequence[int]], seed: int):
        """k completions per prompt from ``model`` (the engine's order: sample index 0..k−1)."""
        engine = self.engine(model)
        return engine.generate(
            [list(p) for p in prompt_ids],
            k=self.online.k,
            temperature=self.online.temperature,
            max_new_tokens=self.online.max_new_tokens,
            seed=seed,
        )

    def _reference_context(self, policy):
        if self.ref_model is not None:
            return contextlib.nullcontext(self.accelerator.unwrap_model(self.ref_model))
        if hasattr(policy, "disable_adapter"):

            @contextlib.contextmanager
            def base():
                with policy.disable_adapter():
                    yield policy

            return base()
        raise RuntimeError("online DPO needs a reference: a reference model or a PEFT adapter to disable")

    def make_pairs(self, model, prompt_ids: Sequence[Sequence[int]]) -> tuple[list[dict], list[float], dict]:
        """Sample, judge and pair one micro-batch: the pair rows, their weights (1, or 0 for a tie) and
        the local sums behind the logged statistics."""
        if self.judge is None or self.online is None:
            raise PrefoptError(
                "the online trainer has no judge to rank its samples: `prefopt train` and `prefopt compare` "
                "build it from the recipe's online.judge, but this run was assembled without one.",
                where="online.judge",
                fix="train the recipe with `prefopt train`, or pass judge= (prefopt.judge.length.recipe_judge).",
            )
        policy = self.accelerator.unwrap_model(model)
        completions = self.sample(policy, prompt_ids, self._seed_now())
        self.last_samples = completions
        tok = self.processing_class
        texts = [tok.decode(list(p), skip_special_tokens=True) for p in prompt_ids]
        flat = [(i, c) for i, row in enumerate(completions) for c in row]
        scores = self.judge.score([texts[i] for i, _ in flat], [c.text for _, c in flat])
        seqs = [(list(prompt_ids[i]), list(c.token_ids)) for i, c in flat]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        lp, _ = completion_logps(policy, seqs, pad_token_id=pad)
        with self._reference_context(policy) as ref:
            lr, _ = completion_logps(ref, seqs, pad_token_id=pad)
        if model.training is False:  # completion_logps restores the mode it found; keep training on
            model.train()
        k = self.online.k
        rows, weights, ties = [], [], 0
        for i, row in enumerate(completions):
            pick = best_and_worst(scores[i * k : (i + 1) * k], self.judge.tie_margin)
            if pick is None:
                ties += 1
                pick, w = (0, 1), 0.0
            else:
                w = 1.0
            c, r = row[pick[0]], row[pick[1]]
            rows.append(
                {
                    "prompt_ids": list(prompt_ids[i]),
                    "chosen_ids": list(c.token_ids),
                    "rejected_ids": list(r.token_ids),
                }
            )
            weights.append(w)
        valid = [s for s in scores if s is not None]
        sums = {
            "score_sum": float(sum(valid)),
            "scored": float(len(valid)),
            "kl_sum": float((lp - lr).sum()),
            "length_sum": float(sum(c.length for _, c in flat)),
            "replies": float(len(flat)),
            "ties": float(ties),
            "prompts": float(len(completions)),
        }
        return rows, weights, sums

    def _log_online(self, sums: dict) -> None:
        keys = list(sums)
        t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            t = self.accelerator.gather(t.unsqueeze(0)).sum(dim=0)
        g = dict(zip(keys, (float(x) for x in t.tolist())))
        m = self._metrics["train"]
        m["online/score"].append(g["score_sum"] / max(g["scored"], 1.0))
        m[ONLINE_KL].append(g["kl_sum"] / max(g["replies"], 1.0))
        m["online/length"].append(g["length_sum"] / max(g["replies"], 1.0))
        m["online/ties"].append(g["ties"] / max(g["prompts"], 1.0))
        m["online/pairs"].append(g["prompts"] - g["ties"])

    # ------------------------------------------------------------------ training
    def get_train_dataloader(self):
        collator, self.data_collator = self.data_collator, _prompt_rows  # training rows give prompts only
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    def training_step(self, model, inputs, num_items_in_batch=None):
        rows, weights, sums = self.make_pairs(model, inputs["prompt_ids"])
        self._log_online(sums)
        batch = self.pair_collator(rows)
        batch[WEIGHT] = torch.tensor(weights, dtype=torch.float32)
        return super().training_step(model, batch, num_items_in_batch)

    def _compute_loss(self, model, inputs, return_outputs):
        inputs = dict(inputs)
        weights = inputs.pop(WEIGHT, None)
        if weights is None:  # evaluation on the data's own (offline) pairs: every pair counts
            weights = torch.ones(inputs["input_ids"].size(0) // 2, device=inputs["input_ids"].device)
        mode = "train" if self.model.training else "eval"
        pc, pr, rc, rr, lc, lr = self.policy_and_reference_logps(model, inputs)
        if self.prefopt_loss is not None:  # the adapter's loss (IPO's with loss.loss_type: ipo)
            per = self.prefopt_loss(pc, pr, rc, rr, lc, lr, self.beta)
        else:
            per = losses.dpo_loss(pc, pr, rc, rr, beta=self.beta)
        weights = weights.to(per.device, per.dtype)
        pairs = weights.sum().detach()
        n = self.accelerator.num_processes
        if n > 1:
            pairs = self.accelerator.gather(pairs.reshape(1)).sum()
        # the mean over the global batch's pairs: DDP averages gradients over processes, hence × n
        loss = (per * weights).sum() * n / pairs.clamp(min=1.0)

        keep = weights > 0
        chosen_rewards = self.beta * (pc - rc).detach()
        rejected_rewards = self.beta * (pr - rr).detach()
        if bool(keep.any()) or n > 1:
            gather = self.accelerator.gather
            w = gather(weights.detach())
            cr, rj = gather(chosen_rewards), gather(rejected_rewards)
            lpc, lpr = gather(pc.detach()), gather(pr.detach())
            sel = w > 0
            if bool(sel.any()):
                m = self._metrics[mode]
                m["rewards/chosen"].append(cr[sel].mean().item())
                m["rewards/rejected"].append(rj[sel].mean().item())
                m["rewards/accuracies"].append((cr[sel] > rj[sel]).float().mean().item())
                m["rewards/margins"].append((cr[sel] - rj[sel]).mean().item())
                m["logps/chosen"].append(lpc[sel].mean().item())
                m["logps/rejected"].append(lpr[sel].mean().item())
        if return_outputs:
            return loss, {}
        return loss


def _prompt_rows(features: list[dict]) -> dict[str, Any]:
    """The collator of the training rows: their prompt ids only (pairs are made in the step)."""
    return {"prompt_ids": [list(f["prompt_ids"]) for f in features]}
