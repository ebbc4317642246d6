"""prefopt.config.fidelity: one test per rule (through prefopt.config.recipe.load_recipe), loss-key hints, KTO weights."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import pytest

from prefopt.config import fidelity
from prefopt.config.fidelity import RULES, check_kto_weights, check_recipe, evaluate_rules, loss_key_hint
from prefopt.config.recipe import load_recipe
from prefopt.core.errors import PrefoptError

BASE = {
    "algorithm": "dpo",
    "model": {"name": "builtin:tiny-arith"},
    "data": {"train": [{"source": "jsonl", "path": "x.jsonl"}]},
}
RULE_IDS = {r.id for r in RULES}


def recipe(algorithm="dpo", loss=None, training=None) -> dict:
    d = copy.deepcopy(BASE)
    d["algorithm"] = algorithm
    if loss is not None:
        d["loss"] = loss
    if training is not None:
        d["training"] = training
    return d


def load_error(data) -> str:
    with pytest.raises(PrefoptError) as exc:
        load_recipe(data=data)
    return str(exc.value)


def assert_rule_error(data, rule_id: str, *fragments: str) -> str:
    assert rule_id in RULE_IDS
    msg = load_error(data)
    assert f"[{rule_id}]" in msg, msg
    assert "Fix:" in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


def warnings_logged(caplog, data) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prefopt"):
        load_recipe(data=data)
    return [r.getMessage() for r in caplog.records if r.name == "prefopt"]


@pytest.fixture
def liger_installed(monkeypatch):
    monkeypatch.setattr(fidelity, "_liger_available", lambda: True)


@pytest.fixture
def liger_missing(monkeypatch):
    monkeypatch.setattr(fidelity, "_liger_available", lambda: False)


# ------------------------------------------------------------------------------------------ baseline
@pytest.mark.parametrize("algorithm", ["dpo", "ipo", "kto", "orpo", "simpo"])
def test_default_recipes_pass_without_findings(algorithm, caplog):
    assert warnings_logged(caplog, recipe(algorithm)) == []
    assert check_recipe(load_recipe(data=recipe(algorithm)), where="x") == []


def test_rule_table_is_well_formed():
    assert len(RULE_IDS) == len(RULES)
    for r in RULES:
        assert r.severity in ("error", "warn")
        assert r.algorithms and r.algorithms <= fidelity.ALL
        assert re.fullmatch(r"[a-z0-9-]+", r.id)


def test_every_rule_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "losses.md").read_text()
    for r in RULES:
        assert f"`{r.id}`" in doc, r.id


# ------------------------------------------------------------------------------------------ one test per rule
@pytest.mark.parametrize("algorithm", ["dpo", "ipo"])
def test_padding_free_dpo(algorithm):
    assert_rule_error(
        recipe(algorithm, training={"padding_free": True}), "padding-free-dpo", "remove training.padding_free"
    )
    load_recipe(data=recipe(algorithm, training={"padding_free": False}))


@pytest.mark.parametrize(
    "algorithm, owner",
    [
        ("dpo", "loss.beta"),
        ("ipo", "loss.tau"),
        ("kto", "loss.beta"),
        ("orpo", "loss.lam"),
        ("simpo", "loss.beta"),
    ],
)
def test_training_beta(algorithm, owner):
    assert_rule_error(recipe(algorithm, training={"beta": 0.3}), "training-beta", f"set {owner} instead")


@pytest.mark.parametrize(
    "algorithm, value", [("dpo", ["sigmoid"]), ("ipo", ["ipo"]), ("kto", "kto"), ("simpo", "simpo")]
)
def test_training_loss_type(algorithm, value):
    assert_rule_error(recipe(algorithm, training={"loss_type": value}), "training-loss-type", "algorithm:")


@pytest.mark.parametrize(
    "algorithm, fragment",
    [
        ("dpo", "set loss.label_smoothing instead"),
        ("simpo", "set loss.label_smoothing instead"),
        ("ipo", "IPO does not use label smoothing"),
    ],
)
def test_training_label_smoothing(algorithm, fragment):
    assert_rule_error(
        recipe(algorithm, training={"label_smoothing": 0.1}), "training-label-smoothing", fragment
    )


def test_training_simpo_gamma():
    msg = assert_rule_error(
        recipe("simpo", loss={"beta": 2.0}, training={"simpo_gamma": 1.6}),
        "training-simpo-gamma",
        "set loss.gamma_beta_ratio",
    )
    assert "gamma_beta_ratio = 0.8" in msg


def test_training_cpo_alpha():
    assert_rule_error(recipe("simpo", training={"cpo_alpha": 1.0}), "training-cpo-alpha", "CPO-SimPO")
    # even cpo_alpha: 0 is prefopt's to set
    assert_rule_error(recipe("simpo", training={"cpo_alpha": 0.0}), "training-cpo-alpha")


def test_training_alpha():
    assert_rule_error(recipe("simpo", training={"alpha": 0.25}), "training-alpha", "AlphaPO")


@pytest.mark.parametrize("key", ["desirable_weight", "undesirable_weight"])
def test_training_kto_weights(key):
    assert_rule_error(
        recipe("kto", training={key: 2.0}), f"training-{key.replace('_', '-')}", f"set loss.{key} instead"
    )


def test_training_center_rewards_coefficient():
    data = recipe("reward", loss={}, training={"center_rewards_coefficient": 0.01})
    assert_rule_error(
        data, "training-center-rewards-coefficient", "set loss.center_rewards_coefficient instead"
    )
    # a reward model has no β: training.beta is an unknown RewardConfig key, not the β rule's message
    assert 'unknown key "training.beta"' in load_error(recipe("reward", loss={}, training={"beta": 0.1}))


@pytest.mark.parametrize(
    "training, fragment",
    [
        ({"ld_alpha": 0.5}, "LD-DPO"),
        ({"use_weighting": True}, "WPO"),
        ({"f_divergence_type": "js_divergence"}, "f-DPO"),
        ({"loss_weights": [1.0]}, "loss_weights"),
    ],
)
@pytest.mark.parametrize("algorithm", ["dpo", "ipo"])
def test_trl_loss_variant(algorithm, training, fragment):
    assert_rule_error(recipe(algorithm, training=training), "trl-loss-variant", fragment)


def test_trl_loss_variant_defaults_are_fine():
    load_recipe(
        data=recipe(
            "dpo", training={"use_weighting": False, "f_divergence_type": "reverse_kl", "ld_alpha": None}
        )
    )


def test_simpo_gamma_ratio_range(caplog):
    logged = warnings_logged(caplog, recipe("simpo", loss={"beta": 2.0, "gamma_beta_ratio": 1.6}))
    assert len(logged) == 1 and "[simpo-gamma-ratio-range]" in logged[0]
    assert "0–1" in logged[0] and "γ/β = 0.8" in logged[0] and "γ/β = 5" in logged[0]
    assert warnings_logged(caplog, recipe("simpo", loss={"gamma_beta_ratio": 1.0})) == []


def test_liger_kernel_missing(liger_missing):
    assert_rule_error(
        recipe("orpo", training={"use_liger_kernel": True}),
        "liger-kernel-missing",
        "pip install liger-kernel",
    )


@pytest.mark.parametrize(
    "algorithm, loss, fires",
    [
        ("dpo", {"label_smoothing": 0.1}, True),
        ("dpo", {}, False),
        ("ipo", {"length_normalize": False}, True),
        ("ipo", {}, False),
    ],
)
def test_liger_with_loss_override(caplog, liger_installed, algorithm, loss, fires):
    logged = warnings_logged(caplog, recipe(algorithm, loss=loss, training={"use_liger_kernel": True}))
    assert any("[liger-with-loss-override]" in m for m in logged) == fires


@pytest.mark.parametrize("algorithm", ["orpo", "simpo"])
def test_precompute_ref_without_reference(caplog, algorithm):
    data = recipe(algorithm, training={"precompute_ref_log_probs": True})
    # ORPOConfig/CPOConfig have no such field, so the recipe loader rejects the key before this rule runs ...
    assert 'unknown key "training.precompute_ref_log_probs"' in load_error(data)
    # ... and the rule still explains it when the check runs on its own
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prefopt"):
        findings = check_recipe(data, where="r.yaml")
    assert [f.rule_id for f in findings] == ["precompute-ref-without-reference"]
    assert "uses no reference model" in caplog.records[0].getMessage()


def test_kto_per_device_batch():
    assert_rule_error(
        recipe("kto", training={"per_device_train_batch_size": 1}), "kto-per-device-batch", "at least 2"
    )
    load_recipe(data=recipe("kto", training={"per_device_train_batch_size": 2}))


def test_kto_sampling_strategy():
    assert_rule_error(
        recipe("kto", training={"train_sampling_strategy": "random"}), "kto-sampling-strategy", "sequential"
    )
    load_recipe(data=recipe("kto", training={"train_sampling_strategy": "sequential"}))


def test_all_rules_have_a_test():
    tested = {
        "padding-free-dpo",
        "training-beta",
        "training-loss-type",
        "training-label-smoothing",
        "training-simpo-gamma",
        "training-cpo-alpha",
        "training-alpha",
        "training-desirable-weight",
        "training-undesirable-weight",
        "training-center-rewards-coefficient",
        "trl-loss-variant",
        "simpo-gamma-ratio-range",
        "liger-kernel-missing",
        "liger-with-loss-override",
        "precompute-ref-without-reference",
        "kto-per-device-batch",
        "kto-sampling-strategy",
    }
    assert tested == RULE_IDS


# ------------------------------------------------------------------------------------------ reporting
def test_all_errors_in_one_paragraph_with_where():
    msg = load_error(recipe("dpo", training={"padding_free": True, "beta": 0.2, "label_smoothing": 0.1}))
    assert msg.startswith("<recipe>: fidelity check failed (3 problems):")
    for rule_id in ("padding-free-dpo", "training-beta", "training-label-smoothing"):
        assert f"[{rule_id}]" in msg
    assert msg.count("Fix:") == 3 and "\n" not in msg


def test_warnings_are_returned_and_logged_with_where(caplog):
    data = recipe("simpo", loss={"gamma_beta_ratio": 2.0})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prefopt"):
        findings = check_recipe(load_recipe(data=data), where="papers/simpo.yaml")
    assert [(f.rule_id, f.severity) for f in findings] == [("simpo-gamma-ratio-range", "warn")]
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith("papers/simpo.yaml: fidelity warning [simpo-gamma-ratio-range]")
    )


def test_rules_are_data_easy_to_extend():
    extra = fidelity.Rule(
        id="demo",
        algorithms=frozenset({"dpo"}),
        when=lambda a, loss, t: loss["beta"] > 0.4,
        severity="error",
        message="β = {loss[beta]} for {name}",
        fix="lower loss.beta",
    )
    findings = evaluate_rules(recipe("dpo", loss={"beta": 0.5}), rules=[extra])
    assert [str(f) for f in findings] == ["[demo] β = 0.5 for DPO Fix: lower loss.beta"]


# ------------------------------------------------------------------------------------------ loss: key hints
@pytest.mark.parametrize(
    "algorithm, key, fragment",
    [
        ("simpo", "gamma", "loss.gamma_beta_ratio takes γ/β; an absolute γ of X is gamma_beta_ratio = X/β"),
        ("simpo", "simpo_gamma", "loss.gamma_beta_ratio takes γ/β"),
        ("dpo", "tau", "IPO's τ belongs to algorithm: ipo"),
        ("ipo", "beta", "IPO's regularisation is loss.tau (TRL calls it beta)"),
        ("orpo", "beta", "ORPO's λ is loss.lam (TRL beta, reference code --alpha)"),
        ("orpo", "alpha", "ORPO's λ is loss.lam"),
        ("orpo", "lambda", "ORPO's λ is loss.lam"),
        ("ipo", "label_smoothing", "IPO does not use label smoothing"),
        ("kto", "label_smoothing", "KTO does not use label smoothing"),
        ("orpo", "label_smoothing", "ORPO does not use label smoothing"),
        ("kto", "desirable", "loss.desirable_weight"),
        ("kto", "lambda_U", "loss.undesirable_weight"),
        ("simpo", "cpo_alpha", "without an NLL term"),
        ("kto", "loss_type", "from `algorithm:`"),
    ],
)
def test_loss_key_hint_in_load_error(algorithm, key, fragment):
    assert fragment in loss_key_hint(algorithm, key)
    assert loss_key_hint(algorithm, key).startswith(" ")
    msg = load_error(recipe(algorithm, loss={key: 1.0}))
    assert f'unknown loss option "loss.{key}"' in msg and fragment in msg


def test_loss_key_hint_unknown_and_concrete_values():
    assert loss_key_hint("dpo", "betta") == ""
    assert loss_key_hint("simpo", "label_smoothing") == ""  # SimPO takes it
    concrete = loss_key_hint("simpo", "gamma", 1.6, {"beta": 2.0})
    assert "gamma_beta_ratio: 0.8" in concrete
    # an unknown key without a hint still gets did_you_mean from the loader
    assert 'Did you mean "beta"?' in load_error(recipe("dpo", loss={"betta": 0.1}))


# ------------------------------------------------------------------------------------------ KTO weights
@pytest.mark.parametrize(
    "nd, nu, wd, wu",
    [
        (100, 100, 1.0, 1.0),
        (400, 300, 1.0, 1.0),
        (100, 300, 3.0, 1.0),
        (100, 300, 4.0, 1.0),
        (300, 100, 1.0, 2.5),
    ],
)
def test_kto_weights_in_range(nd, nu, wd, wu):
    assert 1.0 <= wd * nd / (wu * nu) <= 4 / 3 + 1e-12
    assert check_kto_weights(nd, nu, wd, wu) is None


def test_kto_weights_out_of_range_suggests_both_options():
    msg = check_kto_weights(100, 300)
    assert msg is not None
    assert "1:1 to 4:3" in msg and "EITHER" in msg and "OR" in msg
    # TRL (kto_trainer.py) would say desirable_weight in [3.0, 3.99] or undesirable_weight in [0.25, 0.33]
    assert "loss.desirable_weight in [3, 4]" in msg
    assert "loss.undesirable_weight in [0.25, 0.33]" in msg
    for wd, wu in ((3.0, 1.0), (4.0, 1.0), (1.0, 0.25), (1.0, 0.33)):
        assert check_kto_weights(100, 300, wd, wu) is None


def test_kto_weights_equal_counts_unequal_weights_warns():
    # TRL skips its check when counts are equal; the rule itself still applies
    assert check_kto_weights(50, 50, 2.0, 1.0) is not None


def test_kto_weights_ratio_above_four_thirds():
    msg = check_kto_weights(500, 100)
    assert "= 5 : 1" in msg
    suggested = re.search(r"undesirable_weight in \[([\d.]+), ([\d.]+)\]", msg)
    lo, hi = float(suggested.group(1)), float(suggested.group(2))
    assert check_kto_weights(500, 100, 1.0, lo) is None and check_kto_weights(500, 100, 1.0, hi) is None


def test_kto_weights_single_class_and_bad_input():
    assert "no undesirable examples" in check_kto_weights(10, 0)
    assert "no desirable examples" in check_kto_weights(0, 10)
    with pytest.raises(ValueError):
        check_kto_weights(-1, 3)
    with pytest.raises(ValueError):
        check_kto_weights(1, 3, 0.0, 1.0)
