"""Length-grouped batching and the split forward (prefopt.training.batching): pairs stay together, the order is
deterministic and the same on every rank, padding drops against random batches, and the split forward
gives the same log-probs and gradients as one padded forward."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch
from datasets import Dataset
from torch.utils.data import RandomSampler, SequentialSampler
from trl import DPOConfig, KTOConfig

from prefopt.model.loading import build_builtin, load_tokenizer
from prefopt.training.batching import (
    LengthGroupingMixin,
    PreferenceLengthGroupedSampler,
    batch_token_slots,
    install_split_forward,
    pair_lengths,
    plan_row_groups,
)
from prefopt.training.refcache import ReferenceCacheMixin
from prefopt.training.trainers import PrefoptDPOTrainer, PrefoptKTOTrainer, add_kl_completions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with_mixins(cls):
    bases = [m for m in (LengthGroupingMixin, ReferenceCacheMixin) if not issubclass(cls, m)]
    return type(cls.__name__, (*bases, cls), {}) if bases else cls


DPO, KTO = _with_mixins(PrefoptDPOTrainer), _with_mixins(PrefoptKTOTrainer)


def _loguniform(rng, lo, hi):
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _spread_pairs(n, seed=0, scale=1.0, max_length=2048):
    """UltraFeedback-like lengths (tokens): prompt 100–1500, chosen/rejected 200–4000, independent."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = min(_loguniform(rng, 100 * scale, 1500 * scale), max_length // 2)
        c = min(_loguniform(rng, 200 * scale, 4000 * scale), max_length - p)
        r = min(_loguniform(rng, 200 * scale, 4000 * scale), max_length - p)
        out.append((p, c, r))
    return out


def _layout_ratio(pairs, batches, split):
    """Token slots the forward processes / real tokens, for TRL's (2B, L) layout of each batch."""
    slots = real = 0
    for b in batches:
        rows = [pairs[i][0] + pairs[i][1] for i in b] + [pairs[i][0] + pairs[i][2] for i in b]
        real += sum(rows)
        slots += plan_row_groups(rows)[1] if split else len(rows) * max(rows)
    return slots / real


def _cut(order, bs):
    order = list(order)
    return [order[i : i + bs] for i in range(0, len(order), bs)]


# ------------------------------------------------------------------------------- sampler
def test_sampler_is_a_seeded_permutation_in_whole_batches_and_agrees_across_ranks():
    lengths = [p + max(c, r) for p, c, r in _spread_pairs(1000)]
    s = PreferenceLengthGroupedSampler(lengths, batch_size=8, seed=3, mega_batch_mult=10)
    first = list(s)
    assert sorted(first) == list(range(1000))
    assert list(s) == first  # deterministic
    assert (
        list(PreferenceLengthGroupedSampler(lengths, batch_size=8, seed=3, mega_batch_mult=10)) == first
    )  # every rank
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == list(range(1000))
    assert list(PreferenceLengthGroupedSampler(lengths, batch_size=8, seed=4, mega_batch_mult=10)) != first
    # batch boundaries: all batches full except the last (1000 = 125 × 8); the first holds the longest row
    batches = s.batches()
    assert all(len(b) == 8 for b in batches)
    assert max(lengths) in [lengths[i] for i in batches[0]]
    # accelerate hands rank r the batches r, r + W, …: each rank gets whole, disjoint batches
    ranks = [[i for b in batches[r::2] for i in b] for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) + len(ranks[1]) == 1000
    odd = PreferenceLengthGroupedSampler(lengths[:997], batch_size=8, seed=0)
    assert [len(b) for b in odd.batches()][-1] == 5 and all(len(b) == 8 for b in odd.batches()[:-1])


def test_padding_drops_against_random_batches():
    pairs = _spread_pairs(4000, seed=1)
    lengths = [p + max(c, r) for p, c, r in pairs]
    bs = 8
    random_batches = _cut(np.random.default_rng(0).permutation(len(pairs)), bs)
    grouped = PreferenceLengthGroupedSampler(lengths, batch_size=bs, seed=0).batches()
    r_random, r_grouped = _layout_ratio(pairs, random_batches, False), _layout_ratio(pairs, grouped, False)
    r_split = _layout_ratio(pairs, grouped, True)
    assert r_random > 1.3  # random batching pads a lot
    assert r_grouped < r_random - 0.15  # grouping removes the between-pair padding …
    assert r_grouped > 1.15  # … but not chosen-vs-rejected padding inside a pair
    assert r_split <= 1.10  # the split forward removes most of that


def test_plan_row_groups_is_optimal():
    rng = random.Random(0)
    for _ in range(50):
        lens = [rng.randint(2, 50) for _ in range(rng.randint(1, 9))]
        groups, slots = plan_row_groups(lens, max_groups=3, penalty=0.0)
        assert sorted(i for g, _ in groups for i in g) == list(range(len(lens)))
        assert slots == sum(len(g) * gl for g, gl in groups) and all(
            max(lens[i] for i in g) == gl for g, gl in groups
        )
        srt = sorted(lens, reverse=True)
        best = len(srt) * srt[0]
        for a, b in itertools.combinations(range(1, len(srt) + 1), 2):
            if b <= len(srt):
                best = min(
                    best, a * srt[0] + (b - a) * srt[a] + (len(srt) - b) * (srt[b] if b < len(srt) else 0)
                )
        for a in range(1, len(srt)):
            best = min(best, a * srt[0] + (len(srt) - a) * srt[a])
        assert slots == best


# ------------------------------------------------------------------------------- in the trainer
def _tagged_pairs(n, seed=0):
    """Pair k: prompt [k+3, …], chosen [k+3, …], rejected [k+3, …] — so a row's pair is readable."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        tag = k + 3
        rows.append(
            {
                "prompt_ids": [tag] + [rng.randrange(100, 250) for _ in range(rng.randint(1, 12))],
                "chosen_ids": [tag] + [rng.randrange(100, 250) for _ in range(rng.randint(0, 20))],
                "rejected_ids": [tag] + [rng.randrange(100, 250) for _ in range(rng.randint(0, 20))],
            }
        )
    return Dataset.from_list(rows)


def _config(tmp, **kw):
    base = dict(
        output_dir=str(tmp / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        remove_unused_columns=False,
        max_length=64,
        logging_steps=1,
        disable_tqdm=True,
        seed=5,
    )
    return DPOConfig(**{**base, **kw})


def test_pairs_stay_together_and_padding_is_logged(tmp_path):
    ds = _tagged_pairs(16)
    tok = load_tokenizer("builtin:tiny-arith")
    model = build_builtin("tiny-arith", 0)
    t = DPO(
        model=model,
        ref_model=build_builtin("tiny-arith", 0),
        args=_config(tmp_path, train_sampling_strategy="group_by_length"),
        train_dataset=ds,
        eval_dataset=ds,
        processing_class=tok,
    )
    assert isinstance(t._get_train_sampler(), PreferenceLengthGroupedSampler)
    assert isinstance(
        t._get_eval_sampler(t.eval_dataset), SequentialSampler
    )  # not transformers' input_ids one
    seen = []
    for batch in t.get_train_dataloader():
        ids, comp = batch["input_ids"], batch["completion_mask"]
        b = ids.size(0) // 2
        for i in range(b):
            tag = int(ids[i, 0])
            assert int(ids[b + i, 0]) == tag  # chosen row i and rejected row b+i: the same prompt
            for row in (i, b + i):  # and each completion starts with the pair's tag
                assert int(ids[row][comp[row].bool()][0]) == tag
            seen.append(tag)
    assert sorted(seen) == [k + 3 for k in range(16)]
    lengths = pair_lengths(ds, 64)
    batches = t._get_train_sampler().batches()
    spread_grouped = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    spread_random = np.mean(
        [lengths[b].max() - lengths[b].min() for b in _cut(np.random.default_rng(0).permutation(16), 4)]
    )
    assert spread_grouped < spread_random
    t.train()
    logged = [h for h in t.state.log_history if "loss" in h]
    assert logged and all(0 <= h["padding/fraction"] <= h["padding/fraction_layout"] < 1 for h in logged)


def test_grouping_is_opt_in_explicit_strategies_win_and_kto_is_not_grouped(tmp_path):
    tok = load_tokenizer("builtin:tiny-arith")
    ds = _tagged_pairs(8)

    def dpo(**kw):
        strategy = kw.pop("strategy", None)
        args = _config(tmp_path, **({"train_sampling_strategy": strategy} if strategy else {}))
        return DPO(
            model=build_builtin("tiny-arith", 0),
            ref_model=build_builtin("tiny-arith", 0),
            args=args,
            train_dataset=ds,
            processing_class=tok,
            **kw,
        )

    assert isinstance(dpo()._get_train_sampler(), RandomSampler)  # default: TRL's random batches
    assert isinstance(dpo(strategy="group_by_length")._get_train_sampler(), PreferenceLengthGroupedSampler)
    assert isinstance(dpo(length_grouping=True)._get_train_sampler(), PreferenceLengthGroupedSampler)
    assert isinstance(
        dpo(strategy="sequential", length_grouping=True)._get_train_sampler(), SequentialSampler
    )
    rows = [
        {"prompt_ids": r["prompt_ids"], "completion_ids": r["chosen_ids"], "label": i % 2 == 0}
        for i, r in enumerate(ds)
    ]
    kto_ds = add_kl_completions(Dataset.from_list(rows))
    cfg = KTOConfig(
        output_dir=str(tmp_path / "k"),
        per_device_train_batch_size=4,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        remove_unused_columns=False,
        train_sampling_strategy="sequential",
    )
    kto = KTO(
        model=build_builtin("tiny-arith", 0),
        ref_model=build_builtin("tiny-arith", 0),
        args=cfg,
        train_dataset=kto_ds,
        processing_class=tok,
    )
    assert not kto._length_grouping_on(kto.train_dataset)
    assert isinstance(kto._get_train_sampler(), SequentialSampler)


def test_split_forward_gives_the_same_log_probs_and_gradients():
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    a, b = build_builtin("tiny-arith", 0), build_builtin("tiny-arith", 0)
    for m in (a, b):
        add_fused_lm_head(m, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    assert install_split_forward(b) and not install_split_forward(b)
    lens = [40, 38, 37, 9, 8, 4, 3, 30]
    ids = torch.zeros(len(lens), max(lens), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, :n] = torch.randint(3, 250, (n,))
        mask[i, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100  # a prompt
    groups, slots = plan_row_groups(lens)
    assert len(groups) > 1 and slots < ids.numel()
    outs = [
        m(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
        for m in (a, b)
    ]
    for f in ("log_probs", "entropy", "mean_logits", "is_top1", "label_mask"):
        x, y = getattr(outs[0], f), getattr(outs[1], f)
        assert x.shape == y.shape, f
        torch.testing.assert_close(x.float(), y.float(), rtol=0, atol=2e-5)
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=0, atol=1e-6)
    for o in outs:
        (o.log_probs.sum(dim=1) * torch.linspace(0.5, 1.5, len(lens))).sum().backward()
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
    # calls it does not handle go straight through: no fused head, left padding
    plain = b(input_ids=ids, attention_mask=mask)
    assert plain.logits.shape[:2] == ids.shape
    left = torch.flip(mask, dims=[1])
    out = b(input_ids=ids, attention_mask=left, labels=labels, fused_lm_head=True)
    assert out.log_probs.shape == (len(lens), max(lens) - 1)


def test_batch_token_slots_counts_real_layout_and_processed():
    mask = torch.tensor(
        [
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 1, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    real, layout, processed = batch_token_slots({"attention_mask": mask}, split=True)
    assert (real, layout) == (18, 32) and real <= processed < layout
    assert batch_token_slots({"attention_mask": mask}, split=False)[2] == 32
