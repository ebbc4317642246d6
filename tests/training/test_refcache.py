"""The reference log-prob cache (prefopt.training.refcache): invalidation by every key part, reuse across runs,
no pickle on disk, one computation when two processes race, and numbers equal to TRL's on-the-fly
reference log-probs."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from trl import DPOConfig, KTOConfig

from prefopt.config.recipe import ModelSection
from prefopt.model.loading import build_builtin, load_tokenizer
from prefopt.training import refcache
from prefopt.training.batching import LengthGroupingMixin
from prefopt.training.refcache import (
    ReferenceCache,
    ReferenceCacheMixin,
    build_key_parts,
    cache_key,
    data_fingerprint,
    model_identity,
    tokenizer_identity,
    weights_sample_fingerprint,
    weights_sha256,
)
from prefopt.training.trainers import PrefoptDPOTrainer, PrefoptKTOTrainer, add_kl_completions

IDENTITY = {"source": "builtin:tiny-arith", "seed": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with_mixins(cls):
    """The trainer class with both prefopt mixins (whether or not trainers.py already has them)."""
    bases = [m for m in (LengthGroupingMixin, ReferenceCacheMixin) if not issubclass(cls, m)]
    return type(cls.__name__, (*bases, cls), {}) if bases else cls


DPO, KTO = _with_mixins(PrefoptDPOTrainer), _with_mixins(PrefoptKTOTrainer)


def _rows(n=12, seed=0, max_prompt=6, max_completion=6):
    rng = random.Random(seed)

    def ids(lo, hi):
        return [rng.randrange(3, 250) for _ in range(rng.randint(lo, hi))]

    return [
        {
            "prompt_ids": ids(2, max_prompt),
            "chosen_ids": ids(1, max_completion),
            "rejected_ids": ids(1, max_completion),
        }
        for _ in range(n)
    ]


def _unpaired(rows):
    out = []
    for r in rows:
        out.append({"prompt_ids": r["prompt_ids"], "completion_ids": r["chosen_ids"], "label": True})
        out.append({"prompt_ids": r["prompt_ids"], "completion_ids": r["rejected_ids"], "label": False})
    return add_kl_completions(Dataset.from_list(out))


def _trl_config(tmp, cls=DPOConfig, **kw):
    base = dict(
        output_dir=str(tmp / "out"),
        per_device_train_batch_size=4,
        max_steps=1,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        save_strategy="no",
        remove_unused_columns=False,
        max_length=64,
        precompute_ref_log_probs=True,
        disable_tqdm=True,
    )
    return cls(**{**base, **kw})


def _dpo(tmp, ds, cache_dir, *, seed=0, identity=IDENTITY, **kw):
    return DPO(
        model=build_builtin("tiny-arith", seed),
        args=_trl_config(tmp, **kw),
        train_dataset=ds,
        processing_class=load_tokenizer("builtin:tiny-arith"),
        reference_cache={"dir": str(cache_dir), "identity": identity},
    )


# ------------------------------------------------------------------------------- every key part counts
@pytest.fixture(scope="module")
def base_parts(tmp_path_factory):
    tok = load_tokenizer("builtin:tiny-arith")
    ds = Dataset.from_list(_rows())
    return dict(
        model=model_identity(ModelSection(name="builtin:tiny-arith"), seed=0),
        tokenizer=tokenizer_identity(tok),
        data=data_fingerprint(ds, ["prompt_ids", "chosen_ids", "rejected_ids"]),
        family="paired",
        max_length=64,
        max_prompt_length=32,
        truncation_mode="keep_start",
        dtype={"weights": "torch.float32", "autocast": "no"},
        kl=None,
        ld_alpha=None,
    )


def _checkpoint(root: Path, seed: int) -> Path:
    d = root / f"ckpt-{seed}"
    if not d.exists():
        build_builtin("tiny-arith", seed).save_pretrained(d)
    return d


def _mutations(tmp: Path):
    """(name, function of the base kwargs → changed kwargs) for every part of the key."""
    tok = load_tokenizer("builtin:tiny-arith")
    rows = _rows()

    def data(rs, cols=("prompt_ids", "chosen_ids", "rejected_ids")):
        return data_fingerprint(Dataset.from_list(rs), list(cols))

    def tok_changed(fn):
        t = load_tokenizer("builtin:tiny-arith")
        fn(t)
        return tokenizer_identity(t)

    edited = [dict(r) for r in rows]
    edited[3] = {
        **edited[3],
        "chosen_ids": [*edited[3]["chosen_ids"][:-1], (edited[3]["chosen_ids"][-1] + 1) % 250],
    }
    swapped = [rows[1], rows[0], *rows[2:]]
    moved = [dict(r) for r in rows]  # same tokens, one moved from completion to prompt
    moved[0] = {
        **moved[0],
        "prompt_ids": moved[0]["prompt_ids"] + moved[0]["chosen_ids"][:1],
        "chosen_ids": moved[0]["chosen_ids"][1:] or [7],
    }
    ck0, ck1 = _checkpoint(tmp, 0), _checkpoint(tmp, 1)
    local = model_identity(ModelSection(name=str(ck0)), seed=0, memo_dir=tmp)
    model = build_builtin("tiny-arith", 0)
    fp_before = weights_sample_fingerprint(model)
    sha_before = weights_sha256(model)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[5, 7] += 1e-3
    assert weights_sample_fingerprint(model) != fp_before and weights_sha256(model) != sha_before

    return [
        (
            "model: builtin seed",
            lambda p: {**p, "model": model_identity(ModelSection(name="builtin:tiny-arith"), seed=1)},
        ),
        (
            "model: builtin config",
            lambda p: {**p, "model": model_identity(ModelSection(name="builtin:small-25m"), seed=0)},
        ),
        (
            "model: dtype",
            lambda p: {
                **p,
                "model": model_identity(ModelSection(name="builtin:tiny-arith", dtype="bfloat16"), seed=0),
            },
        ),
        (
            "model: attn implementation",
            lambda p: {
                **p,
                "model": model_identity(
                    ModelSection(name="builtin:tiny-arith", attn_implementation="eager"), seed=0
                ),
            },
        ),
        ("model: local weights", lambda p: {**p, "model": local}),
        (
            "model: other local weights",
            lambda p: {**p, "model": model_identity(ModelSection(name=str(ck1)), seed=0, memo_dir=tmp)},
        ),
        (
            "model: revision",
            lambda p: {
                **p,
                "model": model_identity(ModelSection(name=str(ck0), revision="v2"), seed=0, memo_dir=tmp),
            },
        ),
        (
            "model: weights edited in memory",
            lambda p: {**p, "model": {**p["model"], "in_memory": weights_sample_fingerprint(model)}},
        ),
        ("model: full weights hash", lambda p: {**p, "model": {"weights_sha256": weights_sha256(model)}}),
        (
            "tokenizer: vocabulary",
            lambda p: {**p, "tokenizer": tok_changed(lambda t: t.add_tokens(["<extra-token>"]))},
        ),
        (
            "tokenizer: special tokens",
            lambda p: {**p, "tokenizer": tok_changed(lambda t: setattr(t, "pad_token", t.bos_token))},
        ),
        (
            "chat template",
            lambda p: {
                **p,
                "tokenizer": tok_changed(
                    lambda t: setattr(t, "chat_template", (t.chat_template or "") + " ")
                ),
            },
        ),
        ("data: one token", lambda p: {**p, "data": data(edited)}),
        ("data: row order", lambda p: {**p, "data": data(swapped)}),
        ("data: prompt/completion boundary", lambda p: {**p, "data": data(moved)}),
        ("max_length", lambda p: {**p, "max_length": 128}),
        ("max_prompt_length", lambda p: {**p, "max_prompt_length": 16}),
        ("truncation_mode", lambda p: {**p, "truncation_mode": "keep_end"}),
        ("dtype: weights", lambda p: {**p, "dtype": {"weights": "torch.bfloat16", "autocast": "no"}}),
        ("dtype: autocast", lambda p: {**p, "dtype": {"weights": "torch.float32", "autocast": "bf16"}}),
        ("family: unpaired (KTO)", lambda p: {**p, "family": "unpaired", "kl": True}),
        ("ld_alpha", lambda p: {**p, "ld_alpha": 0.5}),
    ], tok


def test_every_key_part_changes_the_key(base_parts, tmp_path):
    mutations, tok = _mutations(tmp_path)
    base = cache_key(build_key_parts(**base_parts))
    assert base == cache_key(build_key_parts(**base_parts))  # deterministic
    assert tokenizer_identity(load_tokenizer("builtin:tiny-arith")) == base_parts["tokenizer"]
    keys = {"base": base}
    for name, mutate in mutations:
        keys[name] = cache_key(build_key_parts(**mutate(base_parts)))
        assert keys[name] != base, name
    assert len(set(keys.values())) == len(keys), "two different changes gave the same key"
    # the KL switch of the unpaired family
    unpaired = {**base_parts, "family": "unpaired"}
    assert cache_key(build_key_parts(**{**unpaired, "kl": True})) != cache_key(
        build_key_parts(**{**unpaired, "kl": False})
    )


def test_hf_cache_blob_name_is_the_file_hash(tmp_path):
    blob = tmp_path / "blobs" / ("ab" * 32)
    blob.parent.mkdir()
    blob.write_bytes(b"weights")
    link = tmp_path / "snapshot" / "model.safetensors"
    link.parent.mkdir()
    link.symlink_to(blob)
    assert refcache.file_sha256(link) == "ab" * 32
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(b"weights")
    import hashlib

    assert refcache.file_sha256(plain, tmp_path / "memo") == hashlib.sha256(b"weights").hexdigest()
    assert (
        refcache.file_sha256(plain, tmp_path / "memo") == hashlib.sha256(b"weights").hexdigest()
    )  # memoised


# ------------------------------------------------------------------------------- reuse, files, invalidation
def test_reused_across_runs_invalidated_by_a_change_and_no_pickle(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    ds = Dataset.from_list(_rows())
    calls = []
    real = refcache.compute_reference_logps
    monkeypatch.setattr(refcache, "compute_reference_logps", lambda *a, **k: calls.append(1) or real(*a, **k))

    first = _dpo(tmp_path, ds, cache_dir)
    assert [e["hit"] for e in first.reference_cache_events] == [False] and len(calls) == 1
    assert first.ref_model is None  # TRL holds no reference copy
    second = _dpo(tmp_path, ds, cache_dir, beta=0.5)  # another point of a β sweep
    assert [e["hit"] for e in second.reference_cache_events] == [True] and len(calls) == 1
    for c in ("ref_chosen_logps", "ref_rejected_logps"):
        np.testing.assert_array_equal(np.array(first.train_dataset[c]), np.array(second.train_dataset[c]))
    second.train()  # TRL trains on the cached columns (one step)

    third = _dpo(tmp_path, ds, cache_dir, max_length=8)  # collator truncation changed → recomputed
    assert [e["hit"] for e in third.reference_cache_events] == [False] and len(calls) == 2
    fourth = _dpo(tmp_path, ds, cache_dir, seed=1)  # other weights under the same name → recomputed
    assert [e["hit"] for e in fourth.reference_cache_events] == [False] and len(calls) == 3
    assert first.reference_cache_events[0]["key"] not in {
        third.reference_cache_events[0]["key"],
        fourth.reference_cache_events[0]["key"],
    }

    files = [p for p in cache_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} <= {"logps.arrow", "key.json"} | {
        p.name for p in files if p.suffix == ".lock"
    }
    for p in files:
        head = p.read_bytes()[:8]
        assert not head.startswith(b"\x80"), f"{p} looks like a pickle"
        assert p.suffix not in (".pkl", ".pickle", ".pt", ".bin")
        if p.name == "logps.arrow":
            assert head.startswith(b"ARROW1")
        if p.name == "key.json":
            meta = json.loads(p.read_text())
            assert {
                "model",
                "tokenizer",
                "chat_template_sha256",
                "data",
                "lengths",
                "dtype",
                "algorithm",
            } <= set(meta["parts"])
    assert not list(cache_dir.glob(".*tmp-*")), "temporary directories left behind"


def test_damaged_entry_is_recomputed(tmp_path):
    cache_dir = tmp_path / "cache"
    ds = Dataset.from_list(_rows(6))
    t = _dpo(tmp_path, ds, cache_dir)
    entry = Path(t.reference_cache_events[0]["path"])
    (entry / "logps.arrow").write_bytes(b"garbage")
    again = _dpo(tmp_path, ds, cache_dir)
    assert [e["hit"] for e in again.reference_cache_events] == [False]
    assert [e["hit"] for e in _dpo(tmp_path, ds, cache_dir).reference_cache_events] == [True]


# ------------------------------------------------------------------------------- equal to on-the-fly
def test_cached_dpo_columns_equal_on_the_fly_reference(tmp_path):
    ds = Dataset.from_list(_rows(10))
    cached = _dpo(tmp_path, ds, tmp_path / "cache", per_device_train_batch_size=3)
    # TRL's on-the-fly path: precompute off, a separate reference model, one batch of all rows
    plain = PrefoptDPOTrainer(
        model=build_builtin("tiny-arith", 0),
        ref_model=build_builtin("tiny-arith", 0).eval(),
        args=_trl_config(tmp_path, precompute_ref_log_probs=False, per_device_train_batch_size=10),
        train_dataset=ds,
        processing_class=load_tokenizer("builtin:tiny-arith"),
    )
    batch = plain.data_collator([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        _, _, ref_c, ref_r, _, _ = plain.policy_and_reference_logps(plain.model, batch)
    np.testing.assert_allclose(
        np.array(cached.train_dataset["ref_chosen_logps"]), ref_c.numpy(), rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(
        np.array(cached.train_dataset["ref_rejected_logps"]), ref_r.numpy(), rtol=0, atol=1e-5
    )


def test_cached_kto_columns_include_kl_terms_and_equal_on_the_fly(tmp_path):
    ds = _unpaired(_rows(6))
    cfg = _trl_config(tmp_path, KTOConfig, train_sampling_strategy="sequential")
    tok = load_tokenizer("builtin:tiny-arith")
    kto = KTO(
        model=build_builtin("tiny-arith", 0),
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        reference_cache={"dir": str(tmp_path / "cache"), "identity": IDENTITY},
    )
    assert {"ref_logps", "ref_KL_logps"} <= set(kto.train_dataset.column_names)
    again = KTO(
        model=build_builtin("tiny-arith", 0),
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        reference_cache={"dir": str(tmp_path / "cache"), "identity": IDENTITY},
    )
    assert [e["hit"] for e in again.reference_cache_events] == [True]
    # on the fly: TRL's compute_ref_log_probs with an independent copy of the starting model, one batch
    from trl.trainer.utils import add_fused_lm_head

    ref = build_builtin("tiny-arith", 0).eval()
    add_fused_lm_head(ref)
    batch = kto.data_collator([ds[i] for i in range(len(ds))])
    logps, kl = kto.compute_ref_log_probs(ref, batch)
    np.testing.assert_allclose(np.array(kto.train_dataset["ref_logps"]), logps.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.array(kto.train_dataset["ref_KL_logps"]), kl.numpy(), rtol=0, atol=1e-5)
    # a different KL pairing is a different entry
    other = ds.remove_columns("KL_completion_ids").add_column(
        "KL_completion_ids", list(reversed(ds["KL_completion_ids"]))
    )
    third = KTO(
        model=build_builtin("tiny-arith", 0),
        args=cfg,
        train_dataset=other,
        processing_class=tok,
        reference_cache={"dir": str(tmp_path / "cache"), "identity": IDENTITY},
    )
    assert [e["hit"] for e in third.reference_cache_events] == [False]


# ------------------------------------------------------------------------------- two processes racing
def _racer(cache_dir: str, out_dir: str, start, idx: int) -> None:
    torch.set_num_threads(1)
    real = refcache.compute_reference_logps

    def slow(*a, **k):
        Path(out_dir, f"computed-{idx}").write_text("1")
        time.sleep(1.0)  # hold the lock long enough for the other process to arrive
        return real(*a, **k)

    refcache.compute_reference_logps = slow
    ds = Dataset.from_list(_rows(8))
    start.wait()
    t = _dpo(Path(out_dir) / f"run{idx}", ds, cache_dir)
    Path(out_dir, f"result-{idx}.json").write_text(
        json.dumps(
            {
                "events": t.reference_cache_events,
                "chosen": list(map(float, t.train_dataset["ref_chosen_logps"])),
            }
        )
    )
    os._exit(0)  # skip atexit handlers inherited from the test process


def test_two_processes_racing_compute_once(tmp_path):
    ctx = mp.get_context("fork")
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_racer, args=(str(tmp_path / "cache"), str(tmp_path), start, i)) for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert len(list(tmp_path.glob("computed-*"))) == 1, "computed twice"
    results = [json.loads((tmp_path / f"result-{i}.json").read_text()) for i in range(2)]
    assert sorted(r["events"][0]["hit"] for r in results) == [False, True]
    assert results[0]["chosen"] == results[1]["chosen"]
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_cache_dir_default_follows_prefopt_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))
    assert ReferenceCache().root == tmp_path / "ref"
    assert ReferenceCache(tmp_path / "x").root == tmp_path / "x"


# ------------------------------------------------------------------------------- reference first
@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_reference_first_gives_trl_loss_and_gradients(tmp_path, peft):
    """Without precompute the mixin runs the reference forward before the policy's (less peak memory):
    loss and gradients are TRL's own."""
    from peft import LoraConfig, get_peft_model

    ds = Dataset.from_list(_rows(6))
    out = []
    for first in (False, True):
        torch.manual_seed(0)
        model = build_builtin("tiny-arith", 0)
        kw = {}
        if peft:
            model = get_peft_model(
                model,
                LoraConfig(
                    r=4,
                    lora_alpha=8,
                    target_modules="all-linear",
                    task_type="CAUSAL_LM",
                    init_lora_weights=False,
                ),
            )
        else:
            with torch.no_grad():  # a policy that differs from its reference
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            kw["ref_model"] = build_builtin("tiny-arith", 0)
        t = DPO(
            model=model,
            args=_trl_config(tmp_path, precompute_ref_log_probs=False, per_device_train_batch_size=6),
            train_dataset=ds,
            processing_class=load_tokenizer("builtin:tiny-arith"),
            reference_first=first,
            **kw,
        )
        t.model.train()
        batch = t.data_collator([ds[i] for i in range(len(ds))])
        loss = t.compute_loss(t.model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}
        out.append((loss.detach(), grads, {k: v[-1] for k, v in t._metrics["train"].items()}))
        assert not t.precompute_ref_logps
    (l0, g0, m0), (l1, g1, m1) = out
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-6)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert m1[k] == pytest.approx(m0[k], abs=1e-6), k


def test_prefopt_train_reuses_the_cache_and_trains_the_same(tmp_path):
    """Through `prefopt train`: the first run with `reference_cache:` computes and stores, the second
    (another β, as in a sweep) hits, and a run without the cache takes the same steps (same losses)."""
    from prefopt import cli

    recipe = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "quickstart" / "dpo.yaml"
    common = [
        "--set",
        "training.max_steps=3",
        "--set",
        "training.logging_steps=1",
        "--set",
        "data.train.0.size=64",
        "--set",
        "evaluation.enabled=false",
        "--set",
        "output.save_model=false",
    ]
    cache = ["--set", "reference_cache.enabled=true", "--set", f"reference_cache.dir={tmp_path / 'rc'}"]

    def run(name, *extra):
        out = tmp_path / name
        assert cli.main(["train", "--config", str(recipe), "--output-dir", str(out), *common, *extra]) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        losses = [
            json.loads(line)["loss"]
            for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line and "event" not in json.loads(line)
        ]
        return manifest, losses

    first, losses_first = run("a", *cache)
    second, _ = run("b", *cache, "--set", "loss.beta=0.5")
    plain, losses_plain = run("c")
    assert [e["hit"] for e in first["reference_cache"]] == [False]
    assert [e["hit"] for e in second["reference_cache"]] == [True]
    assert first["reference_cache"][0]["key"] == second["reference_cache"][0]["key"]
    assert "reference_cache" not in plain
    assert len(losses_first) == 3
    assert losses_first == pytest.approx(losses_plain, abs=1e-5)
