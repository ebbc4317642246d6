"""Less padding for preference data: length-grouped batches of pairs, and a forward that does not pad
short rows to the longest one.

Where the padding comes from. TRL's DPO collator puts a batch of B pairs into one ``(2B, L)`` tensor
(chosen rows, then rejected rows), ``L`` the longest of all 2B sequences. Two things inflate it:

1. *between pairs*: random batches mix short and long pairs. :class:`PreferenceLengthGroupedSampler`
   (opt-in, see below) batches pairs of similar length (key: ``len(prompt) + max(len(chosen), len(rejected))``, capped at
   ``max_length``): shuffle, cut into mega-batches, sort each by length, cut into *global* batches
   (per-device batch × processes × accumulation steps), shuffle their order (longest first, so an
   out-of-memory shows at step 1). Each global batch is sorted, so the per-device micro-batches
   accelerate cuts from it (consecutive slices, dealt to the ranks in turn) are homogeneous too. Seeded
   and re-seeded per epoch (``set_epoch``), so every rank builds the same order; and because the unit is
   the global batch, an optimizer step sees the same pairs whatever the number of processes (a
   2-process run still reproduces a 1-process run). Chosen and rejected stay together (it draws pairs).
2. *within a pair*: chosen and rejected of one prompt often differ a lot in length, and no batching can
   fix that in a ``(2B, L)`` layout (on UltraFeedback-like lengths this alone is ~20 % padding).
   :func:`install_split_forward` wraps the model's fused-LM-head forward (what DPO/KTO call): the rows
   of a right-padded batch are sorted by length and cut into at most ``max_groups`` groups (optimal
   split, by dynamic programming), each group runs trimmed to its own longest row, and the per-token
   outputs are put back in the original ``(2B, L - 1)`` layout. With causal attention and right padding
   a real token never sees the padding, so every output is the same computation on fewer tokens
   (equal up to float rounding); the caller — TRL's loss — sees the same tensors.

Does it change the loss? The split forward: no — the same per-token log-probs (equal up to float
rounding), the same loss and gradients, on for every algorithm by default. The sampler changes which
pairs share a batch, not any pair's loss: the DPO/IPO/ORPO/SimPO batch loss is a mean of per-pair
terms, every pair is used once per epoch and the batch order is shuffled, so each step's expected
gradient is still the full-data gradient. But the batches are length-correlated, and length is rarely
independent of content (in UltraFeedback the chosen reply is longer on average; in prefopt's world the
length of an answer tells its kind of error), so the steps are correlated and training can change: on
the IPO quickstart (seed 42) grouping moved the greedy true-reward lift from −0.04 to −0.13, where the
split forward — a float-rounding change only — moved it by +0.02.
So grouping is **opt-in**: ``training.train_sampling_strategy: group_by_length`` (the TrainingArguments
name; transformers' own ``LengthGroupedSampler`` would read an ``input_ids`` column preference data does
not have, and split pairs), or ``length_grouping=True`` on the trainer. The split forward alone already
removes most padding (see ``benchmarks/padding.py``). KTO: its KL reference point z0 is a batch mean, so
batch composition enters every example's loss, and TRL requires sequential sampling for its KL pairing —
never grouped by default.

Metrics: ``padding/fraction`` (share of the token slots the forward processed that are padding, after
the split) and ``padding/fraction_layout`` (the same for the collator's rectangular layout), logged
with the trainer's metrics (``metrics.jsonl``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Sampler

from prefopt.core.errors import PrefoptError
from prefopt.training.prefix_sharing import install_prefix_sharing, resolve_setting, right_padded_lengths

log = logging.getLogger("prefopt")

MEGA_BATCH_MULT = 50
MAX_GROUPS = 4
GROUP_PENALTY = 0.05  # an extra forward call must save more than 5 % of the token slots to be worth it


# ----------------------------------------------------------------------------------------- lengths
def _lens(col) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)


def pair_lengths(dataset, max_length: int | None = None) -> np.ndarray | None:
    """Per row: the longest sequence the collator builds from it (``prompt + max(chosen, rejected)``
    for pre-tokenised pairs, ``max(chosen_input_ids, rejected_input_ids)`` for ORPO/CPO rows,
    ``prompt + completion`` for unpaired rows), capped at ``max_length``. None if no id columns."""
    cols = set(dataset.column_names)
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= cols:
        names = ["prompt_ids", "chosen_ids", "rejected_ids"]
    elif {"chosen_input_ids", "rejected_input_ids"} <= cols:
        names = ["chosen_input_ids", "rejected_input_ids"]
    elif {"prompt_ids", "completion_ids"} <= cols:
        names = ["prompt_ids", "completion_ids"]
    else:
        return None
    parts = []
    for batch in dataset.select_columns(names).with_format("arrow").iter(batch_size=65536):
        ls = {n: _lens(batch.column(n)) for n in names}
        if names[0] == "prompt_ids" and len(names) == 3:
            parts.append(ls["prompt_ids"] + np.maximum(ls["chosen_ids"], ls["rejected_ids"]))
        elif names[0] == "prompt_ids":
            parts.append(ls["prompt_ids"] + ls["completion_ids"])
        else:
            parts.append(np.maximum(ls["chosen_input_ids"], ls["rejected_input_ids"]))
    lengths = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return np.minimum(lengths, max_length) if max_length else lengths


# ----------------------------------------------------------------------------------------- sampler
class PreferenceLengthGroupedSampler(Sampler[int]):
    """Indices in batches of ``batch_size`` rows of similar length, each sorted longest first (see the
    module docstring). ``batch_size`` is the global batch (per-device × processes × accumulation), a
    multiple of the DataLoader's batch, so micro-batches never straddle two groups.

    Every index appears once per epoch. Only the last batch can be short, and it stays last."""

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        mega_batch_mult: int = MEGA_BATCH_MULT,
        longest_first: bool = True,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.mega = max(1, int(mega_batch_mult)) * self.batch_size
        self.longest_first = longest_first
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[np.ndarray]:
        n, bs = len(self.lengths), self.batch_size
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n)
        batches: list[np.ndarray] = []
        for start in range(0, n, self.mega):
            mega = perm[start : start + self.mega]
            mega = mega[np.argsort(-self.lengths[mega], kind="stable")]
            batches.extend(mega[i : i + bs] for i in range(0, len(mega), bs))
        tail = batches.pop() if batches and len(batches[-1]) < bs else None
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
        if self.longest_first and batches:
            longest = int(np.argmax([self.lengths[b].max() for b in batches]))
            batches[0], batches[longest] = batches[longest], batches[0]
        if tail is not None:
            batches.append(tail)
        return batches

    def __iter__(self) -> Iterator[int]:
        for b in self.batches():
            yield from (int(i) for i in b)


# ----------------------------------------------------------------------------------------- split forward
def plan_row_groups(
    lengths: Sequence[int] | np.ndarray, max_groups: int = MAX_GROUPS, penalty: float = GROUP_PENALTY
) -> tuple[list[tuple[np.ndarray, int]], int]:
    """Split rows into at most ``max_groups`` groups of consecutive lengths (sorted, longest first),
    each padded to its own longest row, minimising token slots × (1 + penalty per extra group).
    Returns ``([(row indices, group length), ...], token slots)``."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 2)  # a forward needs two positions
    n = len(lengths)
    order = np.argsort(-lengths, kind="stable")
    srt = lengths[order]
    if n == 0:
        return [], 0
    # dp[k][i]: least slots covering the i longest rows with k groups; the last group is rows j..i-1,
    # padded to srt[j]. Vectorised over (i, j): O(max_groups · n²) numpy work, < 1 ms for n = 256.
    inf = np.iinfo(np.int64).max // 4
    i_idx = np.arange(n + 1)[:, None]
    j_idx = np.arange(n)[None, :]
    valid = j_idx < i_idx
    step = np.where(valid, (i_idx - j_idx) * srt[None, :], inf)
    dp = [np.full(n + 1, inf, dtype=np.int64)]
    dp[0][0] = 0
    cuts = [None]
    for _ in range(max_groups):
        prev = dp[-1][:n]
        cand = np.where(valid & (prev[None, :] < inf), prev[None, :] + step, inf)
        cut = np.argmin(cand, axis=1)
        dp.append(cand[np.arange(n + 1), cut])
        cuts.append(cut)
    costs = [
        dp[k][n] * (1 + penalty * (k - 1)) if dp[k][n] < inf else np.inf for k in range(1, max_groups + 1)
    ]
    k = int(np.argmin(costs)) + 1
    total = int(dp[k][n])
    groups, i = [], n
    while k > 0:
        s = int(cuts[k][i])
        groups.append((order[s:i], int(srt[s])))
        i, k = s, k - 1
    groups.reverse()
    return groups, total


_SPLITTABLE = {"input_ids", "attention_mask", "labels", "use_cache", "num_items_in_batch"}
_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def install_split_forward(model, *, max_groups: int = MAX_GROUPS, penalty: float = GROUP_PENALTY) -> bool:
    """Wrap ``model.forward`` (already patched by TRL's ``add_fused_lm_head``) so that fused-LM-head
    calls on a right-padded batch run per length group. Anything else (no ``fused_lm_head``, extra
    inputs such as images or router logits, left padding, one group) goes to the original forward.
    Idempotent. Returns whether it installed (False if already there)."""
    if getattr(model, "_prefopt_split_forward", False):
        return False
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        if args or not kwargs.get("fused_lm_head"):
            return inner(*args, **kwargs)
        kwargs = dict(kwargs)
        kwargs.pop("fused_lm_head")
        if not set(kwargs) <= _SPLITTABLE or "attention_mask" not in kwargs or kwargs.get("labels") is None:
            return inner(fused_lm_head=True, **kwargs)
        mask = kwargs["attention_mask"]
        lengths = right_padded_lengths(mask)
        if lengths is None or mask.size(1) < 2:
            return inner(fused_lm_head=True, **kwargs)
        groups, _ = plan_row_groups(lengths.cpu().numpy(), max_groups, penalty)
        if len(groups) < 2:
            return inner(fused_lm_head=True, **kwargs)
        return _run_groups(inner, kwargs, groups, mask.size(0), mask.size(1))

    model.forward = forward
    model._prefopt_split_forward = True
    return True


def _run_groups(inner, kwargs: dict[str, Any], groups, n_rows: int, width: int):
    from trl.trainer.utils import FusedCausalLMOutput

    device = kwargs["input_ids"].device
    num_items = kwargs.get("num_items_in_batch")
    outs, order = [], []
    for rows, g_len in groups:
        idx = torch.as_tensor(rows, device=device, dtype=torch.long)
        sub = {
            k: kwargs[k].index_select(0, idx)[:, :g_len] for k in ("input_ids", "attention_mask", "labels")
        }
        if "use_cache" in kwargs:
            sub["use_cache"] = kwargs["use_cache"]
        outs.append(inner(fused_lm_head=True, **sub))
        order.append(idx)
    perm = torch.cat(order)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n_rows, device=device)
    merged: dict[str, Any] = {}
    for name in _FIELDS:
        parts = [getattr(o, name, None) for o in outs]
        if any(p is None for p in parts):
            merged[name] = None
            continue
        padded = [
            torch.cat([p, p.new_zeros(p.size(0), width - 1 - p.size(1))], dim=1)
            if p.size(1) < width - 1
            else p
            for p in parts
        ]
        merged[name] = torch.cat(padded, dim=0).index_select(0, inverse)
    denom = num_items if num_items is not None else merged["label_mask"].sum().clamp(min=1)
    loss = -merged["log_probs"].sum() / denom
    return FusedCausalLMOutput(loss=loss, aux_loss=None, **merged)


# ----------------------------------------------------------------------------------------- metrics
def batch_token_slots(
    inputs: dict[str, Any], *, split: bool, max_groups: int = MAX_GROUPS, penalty: float = GROUP_PENALTY
) -> tuple[int, int, int]:
    """``(real tokens, slots in the collator's layout, slots the forward processes)`` for one batch
    (DPO/KTO inputs with ``attention_mask`` [+ ``KL_attention_mask``]; ORPO/CPO with
    ``chosen_attention_mask``/``rejected_attention_mask``, concatenated and padded together)."""
    real = layout = processed = 0
    masks = [inputs[k] for k in ("attention_mask", "KL_attention_mask") if k in inputs]
    for m in masks:
        lengths = m.sum(dim=1).cpu().numpy()
        real += int(lengths.sum())
        layout += int(m.numel())
        if split and m.size(1) >= 2:
            groups, slots = plan_row_groups(lengths, max_groups, penalty)
            processed += slots if len(groups) > 1 else int(m.numel())
        else:
            processed += int(m.numel())
    if not masks and "chosen_attention_mask" in inputs:
        c, r = inputs["chosen_attention_mask"], inputs["rejected_attention_mask"]
        real = int(c.sum() + r.sum())
        layout = processed = (c.size(0) + r.size(0)) * max(c.size(1), r.size(1))
    return real, layout, processed


class LengthGroupingMixin:
    """Mix in front of a TRL trainer class (DPO, KTO, ORPO, CPO)::

        class PrefoptDPOTrainer(LengthGroupingMixin, ReferenceCacheMixin, DPOTrainer)

    Length grouping is on when ``train_sampling_strategy`` is ``group_by_length`` (pairs kept together,
    grouped by pair length: what that setting should mean for preference data). ``length_grouping=True``
    also turns it on under the default ``random`` (for API users); ``sequential`` and ``batch_rebalance``
    are respected.
    ``split_forward``: None → on, except under DeepSpeed/FSDP (multi-call forwards not validated there).

    ``prefix_sharing`` (``training.prefix_sharing``: ``"auto"`` default, ``True``, ``False``; paired trainers
    only): each pair's prompt computed once (:mod:`prefopt.training.prefix_sharing`) — on under ``auto`` where
    exactness is proven for the architecture; it replaces the split forward (it packs, so it also removes
    the padding).
    """

    _prefopt_paired = False  # set by the paired trainers (DPO/IPO, ORPO, CPO/SimPO)

    def __init__(
        self,
        *args,
        length_grouping: bool | None = None,
        split_forward: bool | None = None,
        prefix_sharing: bool | str = "auto",
        **kwargs,
    ):
        self._prefopt_length_grouping = length_grouping
        self._prefopt_split = split_forward
        self._prefopt_prefix_setting = prefix_sharing
        self._prefopt_prefix: tuple[bool, str] | None = None
        self._prefopt_prefix_stats: dict = {}
        super().__init__(*args, **kwargs)
        self._ensure_split_forward()

    # -- prefix sharing
    def _prefix_enabled(self) -> bool:
        if self._prefopt_prefix is None:
            setting = self._prefopt_prefix_setting
            if not self._prefopt_paired:
                if setting is True:
                    raise PrefoptError(
                        "training.prefix_sharing: true, but prefix sharing shares a pair's prompt between its "
                        "chosen and rejected replies, and this algorithm trains on unpaired rows.",
                        where="training.prefix_sharing",
                        fix="remove training.prefix_sharing (auto), or use a paired algorithm.",
                    )
                self._prefopt_prefix = (False, "off: unpaired data")
                return False
            model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
            sharded = bool(
                getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False)
            )
            try:
                self._prefopt_prefix = resolve_setting(setting, model.config, sharded=sharded)
            except ValueError as exc:
                raise PrefoptError(
                    f"training.prefix_sharing: true, but prefix sharing is not proven exact for this model: {exc}.",
                    where="training.prefix_sharing",
                    fix="remove training.prefix_sharing (auto: on only where it is exact) or set it to false.",
                ) from None
            log.info("prefix sharing %s", self._prefopt_prefix[1])
        return self._prefopt_prefix[0]

    # -- split forward
    def _split_enabled(self) -> bool:
        if self._prefopt_split is not None:
            return bool(self._prefopt_split)
        return not (getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False))

    def _ensure_split_forward(self) -> None:
        if not hasattr(self, "_prefopt_split"):
            return
        prefix = self._prefix_enabled()
        if not prefix and not self._split_enabled():
            return
        from accelerate.utils import is_peft_model

        for m in (getattr(self, "model", None), getattr(self, "ref_model", None)):
            if m is None:
                continue
            m = self.accelerator.unwrap_model(m) if hasattr(self, "accelerator") else m
            # the object TRL's add_fused_lm_head patched (the wrapper passes other calls through)
            target = m.get_base_model() if is_peft_model(m) else m
            if prefix:
                policy = m is self.accelerator.unwrap_model(self.model)
                install_prefix_sharing(target, self._prefopt_prefix_stats if policy else None)
            else:
                install_split_forward(target)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        self._ensure_split_forward()  # TRL precomputes inside __init__, after patching the LM head
        return super()._precompute_ref_logps(dataset, name, batch_size)

    # -- sampler
    def _length_grouping_on(self, dataset) -> bool:
        strategy = getattr(self.args, "train_sampling_strategy", "random")
        if strategy == "group_by_length":  # transformers' own sampler cannot read preference rows
            return True
        if strategy == "random" and self._prefopt_length_grouping is not None:
            return bool(self._prefopt_length_grouping)
        return False

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if ds is not None and hasattr(ds, "column_names") and self._length_grouping_on(ds):
            lengths = pair_lengths(ds, getattr(self.args, "max_length", None))
            if lengths is not None and len(lengths) == len(ds):
                seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
                group = (
                    self._train_batch_size
                    * self.args.gradient_accumulation_steps
                    * max(1, self.args.world_size)
                )
                return PreferenceLengthGroupedSampler(lengths, group, seed=seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        # transformers' group_by_length eval sampler reads an `input_ids` column preference data lacks
        if (
            getattr(self.args, "train_sampling_strategy", None) == "group_by_length"
            and pair_lengths(eval_dataset.select(range(min(1, len(eval_dataset))))) is not None
        ):
            from torch.utils.data import SequentialSampler

            return SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)

    # -- metrics
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        prefix = self._prefix_enabled()
        self._prefopt_prefix_stats.clear()
        out = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if model.training and isinstance(inputs, dict):
            self._log_padding(inputs, self._prefopt_prefix_stats if prefix else None)
        return out

    def _log_padding(self, inputs, prefix_stats: dict | None = None) -> None:
        packed = bool(prefix_stats and prefix_stats.get("calls"))
        # the split plan only matters when the forward ran split, not packed
        real, layout, processed = batch_token_slots(inputs, split=self._split_enabled() and not packed)
        if layout == 0:
            return
        shared = 0
        if packed:  # the policy forward ran packed
            # per forward (a PEFT reference pass runs through the same wrapped model on the same batch)
            calls = prefix_stats["calls"]
            shared, processed = prefix_stats["shared_tokens"] / calls, prefix_stats["packed_slots"] / calls
        t = torch.tensor(
            [real, layout, processed, shared], dtype=torch.float64, device=self.accelerator.device
        )
        if self.accelerator.num_processes > 1:
            t = self.accelerator.gather(t.unsqueeze(0)).sum(dim=0)
        real, layout, processed, shared = (float(x) for x in t.tolist())
        values = {
            "padding/fraction": 1.0 - (real - shared) / processed,
            "padding/fraction_layout": 1.0 - real / layout,
        }
        if prefix_stats is not None:
            values["prefix_sharing/shared_fraction"] = shared / real  # prompt tokens computed once, not twice
        if hasattr(self, "_metrics") and isinstance(self._metrics, dict) and "train" in self._metrics:
            for k, v in values.items():
                self._metrics["train"][k].append(v)
        elif hasattr(self, "store_metrics"):
            self.store_metrics(values, train_eval="train")
