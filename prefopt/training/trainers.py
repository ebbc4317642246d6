"""TRL trainer subclasses: the only places where prefopt changes what TRL does.

Each override is listed (with its reason) in docs/losses.md and printed by ``prefopt train --dry-run``:

* **Tokenisation (every algorithm).** Datasets arrive pre-tokenised by :mod:`prefopt.data.tokenization`
  (``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` or ``completion_ids``). DPO/KTO skip their own
  tokenisation; ORPO/CPO build their legacy ``*_input_ids``/``*_labels`` rows from the same ids
  instead of re-tokenising and prepending BOS.
* **cDPO** (``algorithm: dpo`` with ``label_smoothing > 0``): TRL's sigmoid loss ignores ε, so the loss
  is :func:`prefopt.training.losses.dpo_loss`.
* **Summed IPO** (``length_normalize: false``): TRL only has the averaged form, so the loss is
  :func:`prefopt.training.losses.ipo_loss` with ``length_normalize=False``.

  Both arrive as ``prefopt_loss``, a function the adapter builds
  (:meth:`prefopt.training.algorithms.Adapter.trainer_kwargs`).

Performance layers (no change to the loss; see docs/performance.md):

* **Split forward** (all five, on by default): :mod:`prefopt.training.batching` runs the rows of a padded batch
  in up to four length groups, each trimmed to its own longest row — the same per-token log-probs on
  fewer token slots. ``padding/fraction`` is logged. Length-grouped *sampling* is opt-in
  (``training.train_sampling_strategy: group_by_length``).
* **Reference log-prob cache** (DPO/IPO/KTO, ``reference_cache.enabled``; on by default in
  ``prefopt compare``): :mod:`prefopt.training.refcache` stores the reference log-probs on disk, keyed by
  content, and feeds TRL's ``precompute_ref_log_probs`` path from it.

Everything else — log-prob computation, reference handling (adapter-disabled base under LoRA,
precomputed log-probs), metrics — is TRL's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from trl import DPOTrainer, KTOTrainer, RewardTrainer
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer

from prefopt.training.batching import LengthGroupingMixin
from prefopt.training.refcache import ReferenceCacheMixin


def _is_pretokenized(dataset) -> bool:
    return dataset is not None and hasattr(dataset, "column_names") and "prompt_ids" in dataset.column_names


PrefoptLoss = Callable[..., torch.Tensor]
"""``loss(pc, pr, rc, rr, lc, lr, beta) -> per-example loss``: summed policy (p) and reference (r) log-probs
of chosen (c) and rejected (r), completion lengths (l), TRL's ``beta``."""


class PrefoptDPOTrainer(LengthGroupingMixin, ReferenceCacheMixin, DPOTrainer):
    """``trl.DPOTrainer`` on prefopt's tokenisation; swaps in prefopt's loss for cDPO / summed IPO."""

    _prefopt_paired = True

    def __init__(self, *args, prefopt_loss: PrefoptLoss | None = None, **kwargs):
        # prefopt_loss: None → TRL's loss; else the adapter's loss function (see PrefoptLoss)
        self.prefopt_loss = prefopt_loss
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if _is_pretokenized(dataset):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _compute_loss(self, model, inputs, return_outputs):
        if self.prefopt_loss is None:
            return super()._compute_loss(model, inputs, return_outputs)
        return self._prefopt_compute_loss(model, inputs, return_outputs)

    def policy_and_reference_logps(self, model, inputs):
        """Summed completion log-probs of chosen/rejected under the policy and the reference, and the
        completion lengths — the same forward TRL uses (fused LM head, completion mask)."""
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        non_model = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
        model_kwargs = {k: v for k, v in inputs.items() if k not in non_model}
        model_kwargs["use_cache"] = False
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = shift_mask.size(1)
        logps = outputs.log_probs[:, -seq_len:].sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref = self.ref_model if self.ref_model is not None else self.model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(ref, inputs)
        lengths = shift_mask.sum(dim=1).clamp(min=1)
        chosen_len, rejected_len = lengths.chunk(2, dim=0)
        return chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_len, rejected_len

    def _prefopt_compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        pc, pr, rc, rr, lc, lr = self.policy_and_reference_logps(model, inputs)
        per_example = self.prefopt_loss(pc, pr, rc, rr, lc, lr, self.beta)
        loss = per_example.mean()

        chosen_rewards = self.beta * (pc - rc).detach()
        rejected_rewards = self.beta * (pr - rr).detach()
        gather = self.accelerator.gather
        m = self._metrics[mode]
        m["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        m["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        m["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        m["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        m["logps/chosen"].append(gather(pc.detach()).mean().item())
        m["logps/rejected"].append(gather(pr.detach()).mean().item())
        if return_outputs:
            return loss, {}
        return loss


class PrefoptKTOTrainer(LengthGroupingMixin, ReferenceCacheMixin, KTOTrainer):
    """``trl.KTOTrainer`` on prefopt's tokenisation; KL pairs independent of the per-device batch size."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not _is_pretokenized(dataset):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if self.calculate_KL and "KL_completion_ids" not in dataset.column_names:
            dataset = add_kl_completions(dataset)
        return dataset


def add_kl_completions(dataset):
    """Mismatched (prompt_i, completion_j) pairs for KTO's KL reference point.

    TRL rotates completions by one inside each chunk of ``per_device_train_batch_size`` rows, which
    makes the pairs — and so the loss — depend on the per-device batch size (a 2-process run would not
    reproduce a 1-process run with the same global batch). prefopt pairs row i with row
    ``(i + n // 2) mod n`` of the (already shuffled) dataset instead: independent of batch size and
    process count, and far from rows that share row i's prompt when unpaired rows come from pairs.
    """
    n = len(dataset)
    completions = dataset["completion_ids"]
    offset = max(1, n // 2)
    kl = [completions[(i + offset) % n] for i in range(n)]
    return dataset.add_column("KL_completion_ids", kl)


def _legacy_row(prompt_ids, chosen_ids, rejected_ids) -> dict:
    """The row format ORPO/CPO's ``tokenize_row`` produces, built from prefopt's ids (no BOS added)."""
    row = {"prompt_input_ids": list(prompt_ids), "prompt_attention_mask": [1] * len(prompt_ids)}
    for side, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
        full = list(prompt_ids) + list(ids)
        row[f"{side}_input_ids"] = full
        row[f"{side}_attention_mask"] = [1] * len(full)
        row[f"{side}_labels"] = [-100] * len(prompt_ids) + list(ids)
    return row


class _LegacyTokenizationMixin:
    def tokenize_row(self, feature, model=None):
        if "prompt_ids" in feature:
            return _legacy_row(feature["prompt_ids"], feature["chosen_ids"], feature["rejected_ids"])
        return super().tokenize_row(feature, model)


class PrefoptORPOTrainer(LengthGroupingMixin, _LegacyTokenizationMixin, ORPOTrainer):
    """``trl.experimental.orpo.ORPOTrainer`` on prefopt's tokenisation.

    The odds-ratio term is TRL's. The NLL term is the paper's by default (Hong et al. 2024, Eq. 2:
    L_SFT = −(1/m)·log P(y_w|x), the chosen completion's mean token NLL, per example): TRL's is one
    token-mean over prompt *and* completion tokens of the whole batch, which on short answers after long
    prompts is mostly language modelling of the prompt. ``loss.nll_on_prompt: true`` keeps TRL's.
    """

    _prefopt_paired = True

    def __init__(self, *args, nll_on_prompt: bool = False, **kwargs):
        self.nll_on_prompt = nll_on_prompt
        super().__init__(*args, **kwargs)

    def concatenated_forward(self, model, batch):
        out = super().concatenated_forward(model, batch)
        if self.nll_on_prompt:
            return out
        chosen_avg_logps = out[0]  # average log-prob of each chosen completion (labels mask the prompt)
        return (*out[:4], -chosen_avg_logps.mean(), *out[5:])


class PrefoptCPOTrainer(LengthGroupingMixin, _LegacyTokenizationMixin, CPOTrainer):
    """``trl.experimental.cpo.CPOTrainer`` (SimPO) on prefopt's tokenisation (TRL's loss; cpo_alpha = loss.sft_weight)."""

    _prefopt_paired = True


def reward_rows(dataset, margin: bool = False):
    """prefopt's tokenised pairs → ``trl.RewardTrainer`` rows: whole sequences ``prompt_ids + chosen_ids`` /
    ``prompt_ids + rejected_ids`` (the reply's EOS included, so the head pools the EOS), and with ``margin``
    TRL's ``margin`` column, score_chosen − score_rejected."""

    def convert(row):
        out = {
            "chosen_ids": list(row["prompt_ids"]) + list(row["chosen_ids"]),
            "rejected_ids": list(row["prompt_ids"]) + list(row["rejected_ids"]),
        }
        if margin:
            out["margin"] = float(row["score_chosen"]) - float(row["score_rejected"])
        return out

    keep = ["chosen_ids", "rejected_ids"] + (["margin"] if margin else [])
    converted = dataset.map(convert, remove_columns=dataset.column_names, desc=None)
    return converted.select_columns(keep)


class PrefoptRewardTrainer(RewardTrainer):
    """``trl.RewardTrainer`` (Bradley-Terry, TRL's loss and metrics) on prefopt's tokenisation.

    Rows arrive as prefopt's ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` (+ scores when
    ``margin``) and become TRL's whole-sequence rows (:func:`reward_rows`). TRL's own ``max_length``
    filter is skipped: prefopt's tokenisation already applied ``training.max_length`` and counted what it
    truncated or dropped (TRL would drop longer pairs without a word, at its default of 1024)."""

    def __init__(self, *args, margin: bool = False, prefix_sharing="auto", **kwargs):
        # prefix_sharing: a reward model scores each sequence whole; there is no shared-prompt forward
        self.prefopt_margin = margin
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if _is_pretokenized(dataset):
            return reward_rows(dataset, self.prefopt_margin)
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
