"""prefopt/training/distinfo.py: the launch check (a mode the process state lacks → exit 2 before any model loads)
and the manifest's ``distributed`` block (engine, precision, where the reference lives, what is sharded).
The multi-process cases run for real in tests/pipeline/test_fsdp2.py, test_distributed.py and test_grad_sync.py."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from prefopt.core.errors import PrefoptError
from prefopt.training import distinfo

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "recipes" / "quickstart"


def _state(kind: str, n: int = 2):
    return SimpleNamespace(distributed_type=DistributedType[kind], num_processes=n)


FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2"}
DS_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "WORLD_SIZE": "2"}


def test_fsdp_capable_states_are_accelerates_own_list():
    """The refusal rests on which process states accelerate's AcceleratorState turns into FSDP; read that
    list from the installed accelerate so that an upgrade which changes it fails here."""
    from accelerate.state import AcceleratorState

    src = inspect.getsource(AcceleratorState.__init__)
    blocks = [
        b for b in re.findall(r"elif self\.distributed_type in \[(.*?)\]:", src, re.S) if "MULTI_GPU" in b
    ]
    assert len(blocks) == 1, "accelerate's FSDP branch moved: re-read AcceleratorState.__init__"
    assert "ACCELERATE_USE_FSDP" in src.split(blocks[0], 1)[1][:3000]  # the FSDP switch is inside that branch
    assert set(re.findall(r"DistributedType\.(\w+)", blocks[0])) == set(distinfo.FSDP_CAPABLE)
    assert "MULTI_CPU" not in distinfo.FSDP_CAPABLE


@pytest.mark.parametrize("kind", ["MULTI_CPU", "NO"])
def test_fsdp_config_without_an_fsdp_capable_state_is_refused(kind):
    with pytest.raises(PrefoptError) as err:
        distinfo.check_launch(
            state=_state(kind, 2 if kind == "MULTI_CPU" else 1), env={**FSDP_ENV, "WORLD_SIZE": "1"}
        )
    msg = str(err.value)
    assert err.value.exit_code == 2
    assert "asked for FSDP" in msg and kind in msg and "fsdp_version 2" in msg
    assert "configs/accelerate/fsdp_cpu.yaml" in msg and "multi_cpu.yaml" in msg  # the fixes
    if kind == "MULTI_CPU":
        assert "plain DDP" in msg


def test_deepspeed_on_cpu_processes_is_refused():
    with pytest.raises(PrefoptError, match=r"asked for DeepSpeed.*ZeRO stage 3.*MULTI_CPU"):
        distinfo.check_launch(state=_state("MULTI_CPU"), env={**DS_ENV, "ACCELERATE_USE_CPU": "true"})
    with pytest.raises(PrefoptError, match="DeepSpeed"):  # the CPU flag alone is enough
        distinfo.check_launch(
            state=_state("MULTI_GPU"), env={**DS_ENV, "ACCELERATE_USE_CPU": "true"}, cuda=True
        )


def test_processes_that_did_not_join_are_refused():
    with pytest.raises(PrefoptError, match=r"started 2 processes.*runs alone"):
        distinfo.check_launch(state=_state("NO", 1), env={"WORLD_SIZE": "2"})


def test_cpu_processes_without_accelerate_use_cpu_are_refused():
    """Seen: multi_cpu.yaml launched without ACCELERATE_USE_CPU trains each process alone (transformers'
    TrainingArguments rebuilds accelerate's state without use_cpu) and both crash writing the same model."""
    with pytest.raises(PrefoptError, match=r"no GPU and ACCELERATE_USE_CPU is not set") as err:
        distinfo.check_launch(state=_state("MULTI_CPU"), env={"WORLD_SIZE": "2"}, cuda=False)
    assert "ACCELERATE_USE_CPU=true" in str(err.value)
    # training.use_cpu in the recipe does what the variable does
    recipe = SimpleNamespace(training={"use_cpu": True})
    distinfo.check_launch(recipe, state=_state("MULTI_CPU"), env={"WORLD_SIZE": "2"}, cuda=False)


@pytest.mark.parametrize(
    "kind,env",
    [
        ("MULTI_GPU", FSDP_ENV),  # accelerate will apply FSDP
        ("FSDP", FSDP_ENV),  # already applied
        ("MULTI_GPU", DS_ENV),
        ("DEEPSPEED", DS_ENV),
        ("MULTI_CPU", {"WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "true"}),  # DDP on CPU, as asked
        ("NO", {}),
    ],
)
def test_launches_the_state_can_honour_pass(kind, env):
    gpu = kind in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    distinfo.check_launch(state=_state(kind, 1 if kind == "NO" else 2), env=env, cuda=gpu)


def test_requested_reads_the_launcher_variables():
    assert distinfo.requested({}) == {"world_size": 1, "engine": None}
    assert distinfo.requested(FSDP_ENV) == {"world_size": 2, "engine": "fsdp", "fsdp_version": 2}
    assert distinfo.requested(DS_ENV)["zero_stage"] == 3


def test_cli_refuses_an_fsdp_launch_before_anything_loads(tmp_path, monkeypatch, capsys):
    """One process asked for FSDP (an FSDP accelerate config, no GPU): exit 2, one paragraph, no traceback,
    nothing written and no model loaded."""
    from prefopt import cli
    from prefopt.model import loading as models

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    out = tmp_path / "run"
    argv = ["train", "--config", str(QUICKSTART / "dpo.yaml"), "--output-dir", str(out)]
    argv += [
        "--set",
        "training.max_steps=1",
        "--set",
        "data.train.0.size=16",
        "--set",
        "evaluation.enabled=false",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("prefopt: error:") and "asked for FSDP" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "resolved.yaml").exists()


# ------------------------------------------------------------------------------ the manifest's block
def _trainer(tmp_path, algorithm="dpo", **recipe_extra):
    from datasets import Dataset

    from prefopt.config.recipe import load_recipe
    from prefopt.data.tokenization import tokenize_dataset
    from prefopt.model.loading import load_model
    from prefopt.pipeline.run import build_trainer

    loss = {"dpo": {"beta": 1.0}, "orpo": {"lam": 0.1}}[algorithm]
    data = {
        "algorithm": algorithm,
        "seed": 0,
        "model": {"name": "builtin:tiny-arith", **recipe_extra.pop("model", {})},
        "data": {"train": [{"source": "world", "task": "arith", "size": 8}]},
        "loss": loss,
        "training": {"per_device_train_batch_size": 4, "max_steps": 1, **recipe_extra.pop("training", {})},
    }
    recipe = load_recipe(data=data)
    model, tok = load_model(recipe.model, seed=recipe.seed)
    rows = [
        {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a, b in [(1, 2), (3, 4)]
    ]
    train_tok, _ = tokenize_dataset(Dataset.from_list(rows), "paired", tok, 16, None)
    return build_trainer(recipe, model, tok, train_tok, None, output_dir=str(tmp_path / "ckpt"))


def test_describe_single_process_full_fine_tuning(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    d = distinfo.describe(_trainer(tmp_path), uses_reference=True)
    json.dumps(d)  # goes into manifest.json as is
    assert d["engine"] == "single" and d["distributed_type"] == "NO" and d["num_processes"] == 1
    assert d["mixed_precision"] == "no" and d["trainable_param_dtype"] == "float32"
    assert d["matches_launcher"] is True
    pol = d["policy_sharding"]
    assert pol["sharded"] is False and pol["local_fraction"] == 1.0 and pol["dtensor_params"] == 0
    assert d["reference"]["kind"] == "separate copy" and d["reference"]["sharding"]["sharded"] is False


@pytest.mark.parametrize(
    "algorithm,extra,kind",
    [
        ("dpo", {"model": {"lora": {"r": 4, "lora_alpha": 8}}}, "adapter-disabled base"),
        ("dpo", {"training": {"precompute_ref_log_probs": True}}, "precomputed"),
        ("orpo", {}, "none"),
    ],
)
def test_describe_says_where_the_reference_lives(tmp_path, algorithm, extra, kind):
    from prefopt.training.algorithms import get_adapter

    trainer = _trainer(tmp_path, algorithm, **extra)
    d = distinfo.describe(trainer, uses_reference=get_adapter(algorithm).uses_reference)
    assert d["reference"]["kind"] == kind, d["reference"]
