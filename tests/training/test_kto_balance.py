"""KTO keeps the paper's label balance on a user's own data (issue: unpairing pairs that share their
correct reply, then de-duplicating, left 1,862 desirable : 3,450 undesirable rows trained at 1 : 1).

* ``dedupe`` compares records as given (pairs as pairs) before ``transform: unpair``, so two pairs that
  share their correct reply give two desirable rows and the balance stays the pairs' 1 : 1;
* a recipe without weights gets them from the label counts by the 1:1–4:3 rule, said in the log, the
  manifest and ``--dry-run``; explicit weights outside the rule stay a warning.
"""

from __future__ import annotations

import json
import logging

import pytest

from prefopt.config.fidelity import KTO_AUTO_RATIO, KTO_RATIO_BOUNDS, auto_kto_weights, check_kto_weights
from prefopt.config.recipe import load_recipe
from prefopt.data.transforms import prepare
from prefopt.training.algorithms import get_adapter


def _write_pairs(path, n_prompts=40, wrong_per_prompt=3, duplicate_pairs=5):
    """Like a user's file: several pairs per prompt sharing the correct reply, some exact duplicates."""
    rows = []
    for i in range(n_prompts):
        for j in range(wrong_per_prompt):
            rows.append({"question": f"{i} + {i} =", "good": f" {2 * i}", "bad": f" {2 * i + j + 1}"})
    rows += rows[:duplicate_pairs]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def _kto_recipe(path, **loss):
    return load_recipe(
        data={
            "algorithm": "kto",
            "model": {"name": "builtin:tiny-arith"},
            "data": {
                "train": [
                    {
                        "source": "jsonl",
                        "path": str(path),
                        "columns": {"prompt": "question", "chosen": "good", "rejected": "bad"},
                    }
                ],
                "transform": "unpair",
            },
            "loss": {"beta": 0.1, **loss},
            "training": {"max_steps": 1, "per_device_train_batch_size": 8, "max_length": 32},
        }
    )


def _labels(ds):
    labels = ds["label"]
    return sum(1 for x in labels if x), sum(1 for x in labels if not x)


def test_unpairing_pairs_that_share_their_correct_reply_keeps_the_balance(tmp_path):
    n = _write_pairs(tmp_path / "pairs.jsonl")
    recipe = _kto_recipe(tmp_path / "pairs.jsonl")
    train, _, report = prepare(recipe.data.train, None, recipe.data, "kto", None, 0)
    n_d, n_u = _labels(train)
    assert n_d == n_u == n - 5  # each distinct pair → one desirable + one undesirable row
    assert report.counts["duplicate"] == 5  # the duplicated pairs, counted as pairs
    # the shared correct reply appears once per pair it came from
    assert (
        len({(p, c) for p, c, lab in zip(train["prompt"], train["completion"], train["label"]) if lab}) == 40
    )


def test_dedupe_across_sources_compares_records_of_the_same_kind(tmp_path):
    _write_pairs(tmp_path / "a.jsonl", n_prompts=10, duplicate_pairs=0)
    _write_pairs(tmp_path / "b.jsonl", n_prompts=12, duplicate_pairs=0)  # its first 30 pairs repeat a.jsonl
    recipe = _kto_recipe(tmp_path / "a.jsonl")
    src = recipe.data.train[0]
    sources = [src, src.model_copy(update={"path": str(tmp_path / "b.jsonl")})]
    train, _, report = prepare(sources, None, recipe.data, "kto", None, 0)
    assert report.counts["duplicate"] == 30
    assert _labels(train) == (36, 36)


@pytest.mark.parametrize(
    "n_d, n_u", [(1000, 1000), (1200, 1000), (1333, 1000), (1862, 3450), (3450, 1862), (10, 1000), (1, 1)]
)
def test_auto_weights_meet_the_rule(n_d, n_u):
    wd, wu = auto_kto_weights(n_d, n_u)
    assert check_kto_weights(n_d, n_u, wd, wu) is None
    lo, hi = KTO_RATIO_BOUNDS
    weighted = wd * n_d / (wu * n_u)
    assert lo <= weighted <= hi
    # the upper end of the rule, as TRL rounds it (KTO_AUTO_RATIO), up to the weights' two decimals
    assert weighted == pytest.approx(KTO_AUTO_RATIO, abs=0.02)
    assert min(wd, wu) == 1.0  # one weight moves, the other stays 1
    assert (wd > 1.0) == (n_d / n_u < KTO_AUTO_RATIO)
    # TRL's KTOTrainer check (two decimals, 1.33): its warning stays silent on these weights
    assert round(n_u / n_d, 2) <= wd <= round(n_u / n_d * 1.33, 2) or wd == 1.0
    assert wu == 1.0 or round(n_d / n_u / 1.33, 2) <= wu <= round(n_d / n_u, 2)


def test_balanced_counts_get_the_rules_upper_end():
    assert auto_kto_weights(4000, 4000) == (1.33, 1.0)
    assert auto_kto_weights(1330, 1000) == (1.0, 1.0)  # already at 1.33


def _unbalanced(tmp_path, n_d=30, n_u=90):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}", "label": True} for i in range(n_d)]
    rows += [{"prompt": f"q{i}", "completion": f"b{i}", "label": False} for i in range(n_u)]
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_recipe(
        data={
            "algorithm": "kto",
            "model": {"name": "builtin:tiny-arith"},
            "data": {"train": [{"source": "jsonl", "path": str(tmp_path / "kto.jsonl")}]},
            "training": {"max_steps": 1},
        }
    )


def test_settle_on_data_sets_weights_from_the_counts(tmp_path, caplog):
    from prefopt.training.build import settle_on_data

    recipe = _unbalanced(tmp_path)
    train, _, _ = prepare(recipe.data.train, None, recipe.data, "kto", None, 0)
    with pytest.raises(RuntimeError, match="settle_on_data"):  # never a silent 1:1 config
        get_adapter("kto").loss_kwargs(recipe)
    with caplog.at_level(logging.INFO, logger="prefopt"):
        settled, info = settle_on_data(recipe, train)
    assert (info["n_desirable"], info["n_undesirable"]) == (30, 90)
    assert info["desirable_weight"] == 3.99 and info["undesirable_weight"] == 1.0
    assert info["warning"] is None and info["source"].startswith("auto")
    kw = get_adapter("kto").loss_kwargs(settled)
    assert (kw["desirable_weight"], kw["undesirable_weight"]) == (3.99, 1.0)
    assert any("auto" in r.message and "desirable_weight 3.99" in r.message for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_explicit_weights_outside_the_rule_stay_a_warning(tmp_path, caplog):
    from prefopt.training.build import settle_on_data

    recipe = _unbalanced(tmp_path)
    recipe = recipe.model_copy(update={"loss": {"desirable_weight": 1.0}})  # the other weight: 1
    train, _, _ = prepare(recipe.data.train, None, recipe.data, "kto", None, 0)
    with caplog.at_level(logging.INFO, logger="prefopt"):
        settled, info = settle_on_data(recipe, train)
    assert info["source"] == "recipe" and (info["desirable_weight"], info["undesirable_weight"]) == (1.0, 1.0)
    assert "outside the recommended 1:1 to 4:3" in info["warning"]
    assert any(r.levelno == logging.WARNING and "λ_D·n_D" in r.message for r in caplog.records)


def test_dry_run_shows_the_weights_it_will_use(tmp_path):
    from prefopt.training.plan import dry_run

    desc = dry_run(_unbalanced(tmp_path), 1)
    assert desc["data_settings"]["desirable_weight"] == 3.99
    assert desc["trl_config"]["desirable_weight"] == 3.99 and desc["trl_config"]["undesirable_weight"] == 1.0
