"""Online DPO (algorithm: online_dpo): pairing, recipe validation, the per-step log, the KL budget, and
that under LoRA the adapter being trained is the one that generates (the verl#7495 class of bug)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefopt.config.recipe import load_recipe
from prefopt.core.errors import PrefoptError
from prefopt.judge.base import build_judge
from prefopt.judge.length import LengthPenaltyJudge, length_biased_reward, recipe_judge
from prefopt.training.health import kl_budget
from prefopt.training.online import best_and_worst, step_seed

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "recipes" / "quickstart" / "online_dpo.yaml"
SMALL = [
    "data.train.0.size=64",
    "training.per_device_train_batch_size=8",
    "training.warmup_steps=0",
    "training.logging_steps=1",
    "evaluation.enabled=false",
]


# ------------------------------------------------------------------ pairing
def test_best_and_worst_pairs_the_extremes_first_among_equals():
    assert best_and_worst([0.0, 1.0, 1.0, 0.0]) == (1, 0)
    assert best_and_worst([0.2, None, 0.9, -1.0]) == (2, 3)


@pytest.mark.parametrize(
    "scores, margin",
    [([1.0, 1.0, 1.0], 0.0), ([0.5, 0.6], 0.2), ([None, 1.0, None], 0.0), ([None, None], 0.0)],
)
def test_ties_and_unscored_give_no_pair(scores, margin):
    assert best_and_worst(scores, margin) is None


def test_step_seeds_differ_by_step_and_micro_batch_and_repeat():
    seeds = {step_seed(42, s, m) for s in range(5) for m in range(3)}
    assert len(seeds) == 15 and step_seed(42, 3, 1) == step_seed(42, 3, 1)


# ------------------------------------------------------------------ recipe
def test_the_quickstart_validates_and_records_its_defences():
    r = load_recipe(QUICKSTART, ["online.length_penalty=0.1", "online.kl_budget=5"])
    from prefopt.training.algorithms import get_adapter

    over = " ".join(get_adapter(r.algorithm).overrides(r))
    assert "length_penalty=0.1" in over and "kl_budget=5.0" in over and "k=4" in over


def test_online_dpo_without_an_online_block_is_refused():
    with pytest.raises(PrefoptError, match="no online block") as e:
        load_recipe(QUICKSTART, ["online=null"])
    assert "online" in e.value.where and "judge" in e.value.fix


def test_an_online_block_on_an_offline_algorithm_is_refused():
    with pytest.raises(PrefoptError, match="only read by online algorithms"):
        load_recipe(REPO / "configs" / "recipes" / "quickstart" / "dpo.yaml", ["online.judge.type=callable"])


def test_reference_cache_is_refused_for_online_pairs():
    with pytest.raises(PrefoptError, match="new every step"):
        load_recipe(QUICKSTART, ["reference_cache.enabled=true"])


@pytest.mark.parametrize("bad", ["online.k=1", "online.temperature=0", "loss.loss_type=hinge"])
def test_bad_online_values_are_refused(bad):
    with pytest.raises(PrefoptError):
        load_recipe(QUICKSTART, [bad])


def test_a_bad_judge_exits_2_naming_online_judge_before_the_model_loads(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "prefopt.cli", "train", "--config", str(QUICKSTART)]
    cmd += [
        "--output-dir",
        str(tmp_path / "run"),
        "--set",
        "online.judge.function=prefopt.world:TASKS.arith.rewrd",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "online.judge.function" in proc.stderr and "Traceback" not in proc.stderr
    assert 'Did you mean "reward"' in proc.stderr
    assert "Loading weights" not in proc.stderr


# ------------------------------------------------------------------ judges (defences)
def test_length_penalty_subtracts_alpha_per_token_and_keeps_failures():
    inner = build_judge({"type": "callable", "function": "prefopt.world:TASKS.arith.reward"})
    judge = LengthPenaltyJudge(inner, 0.1)
    assert judge.score(["1+2=", "1+2=", "1+2="], ["3", "33", "4"]) == pytest.approx([0.9, -0.2, -0.1])
    failing = build_judge({"type": "callable", "function": "math:sqrt"})  # sqrt(prompt) raises → PrefoptError
    with pytest.raises(PrefoptError):
        LengthPenaltyJudge(failing, 0.1).score(["x"], ["y"])
    assert judge.describe()["judge"]["type"] == "callable" and judge.describe()["unit"] == "characters"


def test_recipe_judge_wraps_only_with_a_penalty():
    r = load_recipe(QUICKSTART)
    assert recipe_judge(r).type == "callable"
    assert isinstance(
        recipe_judge(load_recipe(QUICKSTART, ["online.length_penalty=0.5"])), LengthPenaltyJudge
    )
    assert recipe_judge(load_recipe(REPO / "configs" / "recipes" / "quickstart" / "dpo.yaml")) is None


def test_length_biased_reward_adds_a_bonus_per_character():
    f = "prefopt.world:TASKS.arith.reward"
    assert length_biased_reward("1+2=", "3", function=f, bonus=0.1) == pytest.approx(1.1)
    assert length_biased_reward("1+2=", "3333", function=f, bonus=0.1) == pytest.approx(0.4)


def test_kl_budget_becomes_a_kl_high_stop():
    assert kl_budget(load_recipe(QUICKSTART)) == {}
    got = kl_budget(load_recipe(QUICKSTART, ["online.kl_budget=3", "health.kl_max=5"]))
    assert got["kl_max"] == 3 and "kl_high" in got["stop_on"] and "nonfinite" in got["stop_on"]


def test_the_health_check_stops_on_the_logged_online_kl():
    from transformers import TrainerControl, TrainerState

    from prefopt.training.health import HealthCallback

    r = load_recipe(QUICKSTART, ["online.kl_budget=2"])
    cb = HealthCallback.from_recipe(r, None)
    state, control = TrainerState(), TrainerControl()
    state.global_step = 3
    cb.on_log(None, state, control, logs={"loss": 0.5, "online/kl": 1.0})
    assert not control.should_training_stop
    cb.on_log(None, state, control, logs={"loss": 0.5, "online/kl": 2.5})
    assert control.should_training_stop
    assert cb.fired[-1]["warning"] == "kl_high" and cb.fired[-1]["kl_source"] == "sampled_online"


# ------------------------------------------------------------------ training
def _trainer(tmp_path, overrides):
    from prefopt.data.tokenized import prepare_data
    from prefopt.model.loading import load_model, tokenizer_for
    from prefopt.training.build import build_trainer

    recipe = load_recipe(QUICKSTART, [*SMALL, *overrides])
    tok = tokenizer_for(recipe.model)
    train_tok, _, _, _, _ = prepare_data(recipe, tok)
    model, tok = load_model(recipe.model, seed=recipe.seed, tokenizer=tok)
    trainer = build_trainer(recipe, model, tok, train_tok, None, output_dir=str(tmp_path / "ckpt"))
    trainer.judge = recipe_judge(recipe, tok)
    return recipe, trainer


def test_a_run_logs_score_kl_length_and_ties_per_step(tmp_path):
    from prefopt.pipeline.run import train

    recipe = load_recipe(QUICKSTART, [*SMALL, "training.max_steps=3"])
    summary = train(recipe, output_dir=str(tmp_path / "run"))
    assert summary["global_step"] == 3 and summary["algorithm"] == "online_dpo"
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert 0.0 <= r["online/score"] <= 1.0 and 0.0 <= r["online/ties"] <= 1.0
        assert r["online/length"] > 0 and "online/kl" in r
    assert steps[0]["online/kl"] == pytest.approx(0.0, abs=1e-5)  # step 1 samples the reference itself
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # ln 2
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert any("online: k=4" in o for o in manifest["prefopt_overrides"])


def test_lora_the_adapter_that_trains_is_the_adapter_that_generates(tmp_path):
    """verl#7495: an engine that keeps sampling the initial weights. After training, the trainer's samples
    must be those of the trained weights (the adapter merged into a copy), not of the base."""
    from prefopt.model.engines.hf import TransformersEngine

    recipe, trainer = _trainer(
        tmp_path, ["model.lora.r=8", "training.max_steps=4", "training.learning_rate=5e-3", "online.k=2"]
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    changed = [n for n, p in policy.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])]
    assert changed, "the adapter did not train"
    assert trainer.engine(policy).model is policy  # the engine runs the PEFT model itself, adapter active

    prompts = [f"{a}+{b}=" for a in range(10, 40, 3) for b in (7, 21)]
    ids = [trainer.processing_class(p)["input_ids"] for p in prompts]
    kw = {"k": 2, "temperature": 1.0, "max_new_tokens": 4, "seed": 7}
    sampled = [[c.token_ids for c in row] for row in trainer.sample(policy, ids, seed=7)]
    merged = copy.deepcopy(policy).merge_and_unload().eval()
    want = TransformersEngine(merged, trainer.processing_class).generate(prompts, **kw)
    assert sampled == [[c.token_ids for c in row] for row in want]
    with policy.disable_adapter():
        base = TransformersEngine(policy, trainer.processing_class).generate(prompts, **kw)
    assert sampled != [[c.token_ids for c in row] for row in base]


def test_all_tied_batch_steps_with_zero_loss_and_no_update(tmp_path):
    """A constant judge ties every prompt: no pair, loss 0, weights unchanged (but the step runs)."""
    recipe, trainer = _trainer(tmp_path, ["training.max_steps=1", "online.judge.function=builtins:min"])

    class Constant:
        tie_margin = 0.0

        def score(self, prompts, replies, indices=None):
            return [1.0] * len(prompts)

    trainer.judge = Constant()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert trainer.state.log_history[0]["online/ties"] == 1.0


def test_loss_type_ipo_takes_ipos_loss_with_beta_as_tau():
    from prefopt.training.algorithms import get_adapter

    r = load_recipe(QUICKSTART, ["loss.loss_type=ipo", "loss.beta=0.5"])
    adapter = get_adapter(r.algorithm)
    assert adapter.loss_kwargs(r) == {"loss_type": ["ipo"], "beta": 0.5}
    z = torch.zeros(3)
    per = adapter.trainer_kwargs(r)["prefopt_loss"](z, z, z, z, torch.ones(3), torch.ones(3), 0.5)
    assert per.tolist() == pytest.approx([1.0] * 3)  # (h − 1/(2τ))² at h = 0, τ = 0.5
    assert "prefopt_loss" not in adapter.trainer_kwargs(load_recipe(QUICKSTART))  # sigmoid: DPO's loss


# ------------------------------------------------------------------ resume (slow)
def _cli(out: Path) -> list[str]:
    args = [*SMALL, "training.max_steps=6", "training.save_steps=2", "training.learning_rate=1e-3"]
    cmd = [
        sys.executable,
        "-m",
        "prefopt.cli",
        "train",
        "--config",
        str(QUICKSTART),
        "--output-dir",
        str(out),
    ]
    return cmd + [x for a in args for x in ("--set", a)]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def _online_log(out: Path) -> list[tuple]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["online/score"], r["online/length"]) for r in recs if "loss" in r]


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_to_the_same_samples_and_weights(tmp_path):
    import signal
    import time

    from prefopt.training.resilience import MARKER

    straight = tmp_path / "straight"
    proc = subprocess.run(_cli(straight), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "killed"
    run = subprocess.Popen(_cli(out), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    target, deadline = out / "checkpoints" / "checkpoint-2" / MARKER, time.time() + 300
    while not target.exists():
        assert run.poll() is None and time.time() < deadline, "the run ended before checkpoint-2"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=300)
    assert run.returncode == -signal.SIGKILL and not (out / "model").exists()

    proc = subprocess.run(_cli(out), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr
    a, b = _weights(straight), _weights(out)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    # the steps after the checkpoint sampled and judged the same replies
    resumed = {s: rec for s, *rec in _online_log(out)}
    for step, *rec in _online_log(straight):
        assert resumed[step] == pytest.approx(rec, abs=1e-6), step


def test_a_pessimistic_ensemble_is_an_online_judge():
    members = [
        {"type": "callable", "function": "prefopt.world:TASKS.arith.reward"},
        {
            "type": "callable",
            "function": "prefopt.judge.length:length_biased_reward",
            "kwargs": {"function": "prefopt.world:TASKS.arith.reward", "bonus": 0.5},
        },
    ]
    r = load_recipe(
        QUICKSTART, [f"online.judge={{type: ensemble, combine: mean_minus_std, judges: {members}}}"]
    )
    judge = recipe_judge(r)
    # "3": both 1 and 1.5 → 1.25 − 0.25; "33": 0 and 1 → 0.5 − 0.5: disagreement is penalised
    assert judge.score(["1+2=", "1+2="], ["3", "33"]) == pytest.approx([1.0, 0.0])
    r = load_recipe(QUICKSTART, [f"online.judge={{type: ensemble, combine: min, judges: {members}}}"])
    assert recipe_judge(r).score(["1+2=", "1+2="], ["3", "33"]) == pytest.approx([1.0, 0.0])


# ------------------------------------------------------------------ the length defence (slow)
COUNT = [
    "model.name=world:count",
    "data.train.0.task=count",
    "online.max_new_tokens=24",
    "training.max_length=48",
    "training.num_train_epochs=2",
    'online.judge={type: callable, function: "prefopt.judge.length:length_biased_reward", '
    'kwargs: {function: "prefopt.world:TASKS.count.reward", bonus: 1.0}}',
]


@pytest.mark.slow
def test_the_length_penalty_holds_length_where_a_length_biased_judge_inflates_it(tmp_path):
    """docs/compare.md: on the count world a judge paying 1 per character drives replies to the token
    budget and the true reward to 0 (3 epochs: 5.7 → 15.9 tokens); the penalty keeps them within 10 %."""
    from prefopt.pipeline.run import train

    out = {}
    for name, extra in (("biased", []), ("penalised", ["online.length_penalty=1.0"])):
        recipe = load_recipe(QUICKSTART, [*COUNT, *extra])
        out[name] = train(recipe, output_dir=str(tmp_path / name))["eval"]["world"]
    ref_len = out["biased"]["reference"]["mean_length"]
    assert out["biased"]["policy"]["mean_length"] >= 1.5 * ref_len, out["biased"]
    assert out["biased"]["lift_sampled"] < 0, out["biased"]
    assert abs(out["penalised"]["policy"]["mean_length"] / ref_len - 1) <= 0.10, out["penalised"]
    assert out["penalised"]["lift_sampled"] > 0.05, out["penalised"]


def test_a_trainer_without_a_judge_says_so(tmp_path):
    recipe, trainer = _trainer(tmp_path, ["training.max_steps=1"])
    trainer.judge = None
    with pytest.raises(PrefoptError, match="no judge"):
        trainer.train()
