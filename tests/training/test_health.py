"""Health warnings: each one provoked. ``overfit`` (and stopping) by a real DPO run that over-fits eight
pairs through ``prefopt.training.build.build_trainer``; the length probe by a real sampling probe; the others by
feeding the callback the log dicts TRL would produce (a real run that collapses or diverges takes
minutes)."""

from __future__ import annotations

import json
import logging
import math

import pytest
from transformers import TrainerControl, TrainerState

from prefopt.config.recipe import HealthSection, load_recipe
from prefopt.training.health import ADVICE, WARNINGS, HealthCallback, check_stop_on


def _recipe(algorithm="dpo", **extra):
    loss = {
        "dpo": {"beta": 1.0},
        "ipo": {"tau": 0.1},
        "kto": {"beta": 0.1},
        "orpo": {"lam": 0.1},
        "simpo": {"beta": 2.0},
    }[algorithm]
    data = {
        "algorithm": algorithm,
        "seed": 0,
        "model": {"name": "builtin:tiny-arith"},
        "data": {"train": [{"source": "world", "task": "arith", "size": 8}]},
        "loss": loss,
        "training": {
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 8,
            "max_steps": 30,
            "logging_steps": 1,
            "max_length": 16,
            "lr_scheduler_type": "constant",
        },
        **extra,
    }
    return load_recipe(data=data)


class Feeder:
    """Drive a HealthCallback with synthetic TRL log dicts, one optimizer step each."""

    def __init__(self, algorithm="dpo", beta=0.1, **overrides):
        self.records: list[dict] = []
        self.cb = HealthCallback(HealthSection(), algorithm, self.records.append, beta=beta, **overrides)
        self.state = TrainerState()
        self.state.is_world_process_zero = True
        self.control = TrainerControl()

    def log(self, **logs):
        self.state.global_step += 1
        self.cb.on_log(None, self.state, self.control, logs=dict(logs))
        return self

    def evaluate(self, eval_loss):
        self.cb.on_evaluate(None, self.state, self.control, metrics={"eval_loss": eval_loss})
        return self

    def warnings(self, wid=None):
        return [
            r for r in self.records if r.get("event") == "health" and (wid is None or r["warning"] == wid)
        ]


def _dpo_log(loss, margin, acc=0.5, lc=-20.0, lr=-22.0, beta=0.1, shift=0.0):
    return {
        "loss": loss,
        "rewards/margins": margin,
        "rewards/accuracies": acc,
        "logps/chosen": lc,
        "logps/rejected": lr,
        "rewards/chosen": beta * shift,
        "rewards/rejected": beta * shift - margin,
    }


# ------------------------------------------------------------------------------------------- each warning
def test_margin_stuck_fires_once_per_episode():
    f = Feeder(margin_stuck_steps=4)
    for i in range(6):  # loss falls, margin stays ~0
        f.log(**_dpo_log(0.69 - 0.01 * i, 0.001))
    assert len(f.warnings("margin_stuck")) == 1
    rec = f.warnings("margin_stuck")[0]
    assert rec["step"] == 4 and rec["loss_start"] > rec["loss_now"] and abs(rec["reward_margin"]) < 0.01
    assert rec["advice"] == ADVICE["margin_stuck"]
    f.log(**_dpo_log(0.5, 0.3))  # margin moves: episode over
    for i in range(4):
        f.log(**_dpo_log(0.49 - 0.01 * i, -0.002))
    assert len(f.warnings("margin_stuck")) == 2  # a second, distinct episode


def test_margin_stuck_needs_a_falling_loss():
    f = Feeder(margin_stuck_steps=3)
    for _ in range(5):
        f.log(**_dpo_log(0.6931, 0.0))  # flat loss: nothing learns, but nothing is "stuck while falling"
    assert not f.warnings("margin_stuck")


def test_logp_collapse_short_replies_per_token_against_the_reference():
    """The outside report: KTO's desirable replies (2–3 tokens) fell from −0.74 to −2.8 nats per sequence
    and nothing fired under the old absolute −5 nats/sequence bound. Per token against the reference it
    does."""
    f = Feeder("kto", beta=0.1, completion_lengths=(3.0, 3.0))
    f.log(loss=0.5, **{"rewards/chosen": 0.1 * -0.3, "rewards/rejected": 0.1 * -0.9})  # −0.1, −0.3 /token
    assert not f.warnings("logp_collapse")
    f.log(loss=0.4, **{"rewards/chosen": 0.1 * -2.06, "rewards/rejected": 0.1 * -4.5})
    [rec] = f.warnings("logp_collapse")
    assert rec["shift_chosen_per_token"] == pytest.approx(-2.06 / 3)
    assert rec["shift_rejected_per_token"] == pytest.approx(-1.5)
    assert rec["against"] == "reference" and rec["threshold_per_token"] == -0.5
    f.log(loss=0.3, **{"rewards/chosen": 0.1 * -2.5, "rewards/rejected": 0.1 * -5.0})  # same episode
    assert len(f.warnings("logp_collapse")) == 1


def test_logp_collapse_scales_with_the_reply_length():
    """The same −20 nats per sequence: a collapse on 10-token replies, not on 300-token ones."""
    for lengths, fires in (((10.0, 10.0), True), ((300.0, 300.0), False)):
        f = Feeder("dpo", beta=0.1, completion_lengths=lengths)
        f.log(**_dpo_log(0.69, 0.0, shift=-20.0))  # rewards/chosen = β·(−20), rejected the same
        assert bool(f.warnings("logp_collapse")) is fires, lengths


def test_logp_collapse_needs_both_sides_and_the_optional_sequence_bound():
    f = Feeder("dpo", beta=0.1, completion_lengths=(4.0, 4.0))
    f.log(
        **{"loss": 0.5, "rewards/chosen": 0.1 * -1.0, "rewards/rejected": 0.1 * -30.0}
    )  # chosen −0.25/token
    assert not f.warnings("logp_collapse")
    g = Feeder("dpo", beta=0.1, completion_lengths=(100.0, 100.0), logp_collapse=-10.0)
    g.log(**{"loss": 0.5, "rewards/chosen": 0.1 * -12.0, "rewards/rejected": 0.1 * -20.0})
    assert [r["warning"] for r in g.warnings()] == ["logp_collapse"]  # per sequence, though −0.12/token


def test_logp_collapse_orpo_per_token_averages_against_the_first_log():
    f = Feeder("orpo", beta=None)
    f.log(loss=2.0, **{"logps/chosen": -1.0, "logps/rejected": -1.2})
    f.log(loss=1.9, **{"logps/chosen": -1.4, "logps/rejected": -2.5})  # chosen −0.4/token: not yet
    assert not f.warnings("logp_collapse")
    f.log(loss=1.8, **{"logps/chosen": -1.6, "logps/rejected": -3.0})
    [rec] = f.warnings("logp_collapse")
    assert rec["against"] == "first log" and rec["threshold_per_token"] == -0.5
    assert rec["shift_chosen_per_token"] == pytest.approx(-0.6)


def test_overfit_needs_an_eval_split():
    """A train loss near zero with accuracy pinned at 1.0 is no evidence by itself: silent without eval."""
    f = Feeder()
    for i in range(30):
        f.log(**_dpo_log(0.5 / (i + 1), 5.0 + i, acc=1.0))
    assert not f.warnings("overfit")


def test_overfit_fires_when_eval_loss_rises_while_train_loss_falls():
    f = Feeder()
    f.log(**_dpo_log(0.60, 0.2)).evaluate(0.62)
    f.log(**_dpo_log(0.50, 0.5)).evaluate(0.55)  # both fall: the best so far
    f.log(**_dpo_log(0.40, 0.8)).evaluate(0.58)  # +5 %: below the 10 % threshold
    assert not f.warnings("overfit")
    f.log(**_dpo_log(0.30, 1.2)).evaluate(0.65)  # +18 % while train fell 0.50 → 0.30
    [rec] = f.warnings("overfit")
    assert rec["best_eval_loss"] == 0.55 and rec["train_loss_at_best"] == 0.50 and rec["train_loss"] == 0.30
    assert rec["relative_rise"] == pytest.approx(0.10 / 0.55)
    assert "held-out loss is rising" in rec["advice"]


def test_overfit_silent_when_both_losses_rise():
    """Eval loss up with the train loss up too is instability, not over-fitting."""
    f = Feeder()
    f.log(**_dpo_log(0.40, 0.5)).evaluate(0.50)
    f.log(**_dpo_log(0.55, 0.1)).evaluate(0.70)
    assert not f.warnings("overfit")


def test_kl_high_kto_logged_kl_and_dpo_proxy():
    f = Feeder("kto", kl_max=1.0)
    f.log(loss=0.5, kl=0.2)
    f.log(loss=0.4, kl=1.5)
    f.log(loss=0.3, kl=2.0)
    [rec] = f.warnings("kl_high")
    assert rec["kl"] == 1.5 and rec["kl_source"] == "kto_logged_kl"

    g = Feeder("dpo", beta=0.1, kl_max=10.0)
    g.log(**_dpo_log(0.5, 1.0, shift=-5.0))  # mean log-ratio ≈ (-5 + -15)/2 = -10 → proxy 10: not above
    assert not g.warnings("kl_high")
    g.log(**_dpo_log(0.4, 1.0, shift=-12.0))  # (-12 + -22)/2 = -17 → 17 nats
    [rec] = g.warnings("kl_high")
    assert rec["kl_source"] == "rewards_proxy" and rec["kl"] == pytest.approx(17.0)


def test_kl_high_is_off_without_kl_max():
    f = Feeder("kto")
    f.log(loss=0.5, kl=1e6)
    assert not f.warnings()


def test_nonfinite_stops_training_by_default(caplog):
    f = Feeder()
    f.log(**_dpo_log(0.69, 0.0))
    with caplog.at_level(logging.WARNING, logger="prefopt"):
        f.log(**_dpo_log(float("nan"), 0.0))
    [rec] = f.warnings("nonfinite")
    assert rec["loss"] == "nan" and rec["stopped_training"] is True
    assert f.control.should_training_stop
    assert "health: nonfinite" in caplog.text
    json.dumps(rec)  # the record is valid JSON (NaN written as a string)
    f.log(**_dpo_log(float("inf"), 0.0))
    assert len(f.warnings("nonfinite")) == 1  # same episode


def test_nonfinite_in_kto_kl():
    f = Feeder("kto", stop_on=[])
    f.log(loss=0.5, kl=float("inf"))
    [rec] = f.warnings("nonfinite")
    assert rec["kl_source"] == "kto_logged_kl" and not f.control.should_training_stop


def test_stop_on_any_warning_and_unknown_ids_refused():
    f = Feeder(stop_on=["overfit"])
    f.log(**_dpo_log(0.50, 1.0)).evaluate(0.5)
    assert not f.control.should_training_stop
    f.log(**_dpo_log(0.01, 8.0, acc=1.0)).evaluate(0.9)
    assert f.control.should_training_stop
    with pytest.raises(Exception, match="did you mean|Did you mean"):
        check_stop_on(["overfitt"])
    assert set(WARNINGS) == set(ADVICE)


def test_eval_and_summary_logs_are_ignored():
    f = Feeder()
    f.log(eval_loss=float("nan"), **{"eval_rewards/margins": 0.0})
    f.log(train_loss=0.01, train_runtime=1.0)
    assert not f.warnings()


# ------------------------------------------------------------------------------------------- real runs
def _tiny_pairs():
    from datasets import Dataset

    rows = [
        {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (8, 3)]
    ]
    return Dataset.from_list(rows)


def _build(recipe, tmp_path, callbacks):
    from prefopt.data.tokenization import tokenize_dataset
    from prefopt.model.loading import load_model
    from prefopt.training.build import build_trainer

    model, tok = load_model(recipe.model, seed=recipe.seed)
    train_tok, _ = tokenize_dataset(_tiny_pairs(), "paired", tok, 16, None)
    trainer = build_trainer(
        recipe, model, tok, train_tok, None, output_dir=str(tmp_path / "ckpt"), callbacks=callbacks
    )
    return trainer, tok


def test_real_dpo_run_overfits_eight_pairs_and_stops(tmp_path):
    """A learning rate far too high for eight pairs, judged on held-out pairs the training pairs
    contradict (the same prompts, chosen and rejected swapped): the train loss falls, the eval loss rises
    → overfit → stop (stop_on)."""
    from prefopt.data.tokenization import tokenize_dataset
    from prefopt.model.loading import load_model
    from prefopt.pipeline.run import build_trainer
    from prefopt.training.callbacks import MetricsJsonlCallback

    recipe = _recipe("dpo", health={"stop_on": ["overfit", "nonfinite"]})
    recipe.training.update({"eval_strategy": "steps", "eval_steps": 2, "per_device_eval_batch_size": 8})
    metrics = MetricsJsonlCallback(tmp_path / "metrics.jsonl")
    health = HealthCallback.from_recipe(recipe, metrics.write)
    model, tok = load_model(recipe.model, seed=recipe.seed)
    pairs = _tiny_pairs()
    swapped = pairs.rename_columns({"chosen": "rejected", "rejected": "chosen"})
    train_tok, _ = tokenize_dataset(pairs, "paired", tok, 16, None)
    eval_tok, _ = tokenize_dataset(swapped, "paired", tok, 16, None)
    trainer = build_trainer(
        recipe,
        model,
        tok,
        train_tok,
        eval_tok,
        output_dir=str(tmp_path / "ckpt"),
        callbacks=[metrics, health],
    )
    health.attach(trainer)
    trainer.train()
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    warnings = [r for r in recs if r.get("event") == "health"]
    assert [w["warning"] for w in warnings] == ["overfit"], warnings
    w = warnings[0]
    assert w["stopped_training"] is True and w["eval_loss"] > w["best_eval_loss"] * 1.1
    assert w["train_loss"] < w["train_loss_at_best"]
    assert trainer.state.global_step == w["step"] < 30  # stopped right after the warning
    assert [r["warning"] for r in health.fired] == ["overfit"]


def test_real_probe_measures_lengths_and_kl(tmp_path):
    """The optional sampling probe on a real trainer: reference length at train start, then policy length
    and sampled KL (against the trainer's reference model); length_drift with a zero tolerance."""
    recipe = _recipe(
        "dpo",
        training={
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 8,
            "max_steps": 4,
            "logging_steps": 2,
            "max_length": 16,
        },
    )
    records: list[dict] = []
    health = HealthCallback.from_recipe(
        recipe,
        records.append,
        probe_every=2,
        probe_max_new_tokens=6,
        length_drift=1e-9,
        probe_prompts=["1+1=", "2+3=", "4+4=", "9+9="],
    )
    trainer, _ = _build(recipe, tmp_path, [health])
    health.attach(trainer)
    assert health.reference_model is trainer.ref_model
    trainer.train()
    probes = [r for r in records if r["event"] == "probe"]
    assert [p["step"] for p in probes] == [0, 2, 4]
    assert all(p["mean_length"] > 0 for p in probes) and "kl_sampled" in probes[-1]
    assert math.isfinite(probes[-1]["kl_sampled"])
    assert all(p["reference_mean_length"] == probes[0]["mean_length"] for p in probes)


def test_length_drift_from_the_probe(monkeypatch):
    """length_drift: the probe's mean length vs the starting model's (sampling stubbed: 4 → 4.5 → 7 → 4)."""
    lengths = iter([4.0, 4.5, 7.0, 7.5, 4.0])
    f = Feeder(probe_every=1, probe_prompts=["1+1="], tokenizer=object())
    monkeypatch.setattr(f.cb, "_sample", lambda model, with_kl: {"mean_length": next(lengths)})
    f.cb.on_train_begin(None, f.state, f.control, model=object())
    model = object()
    for _ in range(4):
        f.state.global_step += 1
        f.cb.on_log(None, f.state, f.control, logs=_dpo_log(0.6, 0.2), model=model)
    [rec] = f.warnings("length_drift")  # 7.0 and 7.5 are one episode
    assert rec["step"] == 2 and rec["mean_length"] == 7.0 and rec["reference_mean_length"] == 4.0
    assert rec["relative_change"] == pytest.approx(0.75)
    assert [r["mean_length"] for r in f.records if r["event"] == "probe"] == [4.0, 4.5, 7.0, 7.5, 4.0]


def test_probe_prompts_come_from_the_held_out_split_first():
    from datasets import Dataset

    from prefopt.training.health import probe_prompts_for

    recipe = _recipe("dpo")
    held = Dataset.from_list([{"prompt": p} for p in ["1+1=", "1+1=", "2+2=", "3+3="]])
    assert probe_prompts_for(recipe, held, None, n=2) == ["1+1=", "2+2="]
    world = probe_prompts_for(recipe, None, None, n=3)  # world recipe: the world's test prompts
    from prefopt import world as w

    assert len(world) == 3 and set(world) <= set(w.get_task("arith").split("test"))
