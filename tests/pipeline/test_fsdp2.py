"""Full fine-tuning under PyTorch FSDP2 on 2 CPU processes over gloo reproduces 1 process.

accelerate 1.15 does not apply an FSDP config to CPU processes (it trains plain DDP without a word), so
``scripts/train.py`` refuses that launch with exit 2, and the FSDP2 runs go through
``scripts/train_fsdp_cpu.py``, which lets accelerate take its own FSDP branch on the gloo group: the
policy is sharded by ``fsdp2_prepare_model`` (``fully_shard`` per decoder layer, embeddings/tail, root),
DPO/KTO's reference by TRL's ``prepare_fsdp``, and the final weights are gathered on rank 0 by
``Accelerator.get_state_dict``. The manifest records, from the trained model itself, that every
parameter is a sharded DTensor, so these tests cannot pass on DDP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "recipes" / "quickstart"
FSDP_CPU = REPO / "configs" / "accelerate" / "fsdp_cpu.yaml"
GLOBAL_BATCH = 8
STEPS = 3

pytestmark = pytest.mark.distributed


def _args(algorithm: str, out: Path, per_device: int) -> list[str]:
    sets = {
        "training.per_device_train_batch_size": per_device,
        "training.global_batch_size": GLOBAL_BATCH,
        "training.max_steps": STEPS,
        "training.logging_steps": 1,
        "training.warmup_steps": 0,
        "training.learning_rate": 1e-3,
        "training.save_strategy": "'no'",
        "data.train.0.size": 32,
        "evaluation.enabled": "false",
    }
    args = ["--config", str(QUICKSTART / f"{algorithm}.yaml"), "--output-dir", str(out)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args


def _env() -> dict:
    # PYTHONPATH: a script under scripts/ must import this checkout's prefopt, not another install
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _launch_two(script: str, algorithm: str, out: Path, port: int) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(FSDP_CPU),
        "--num_processes",
        "2",
        "--main_process_port",
        str(port),
        str(REPO / "scripts" / script),
        *_args(algorithm, out, GLOBAL_BATCH // 2),
    ]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def _train_one(algorithm: str, out: Path) -> None:
    from prefopt import cli

    assert cli.main(["train", *_args(algorithm, out, GLOBAL_BATCH)]) == 0


def _losses(out: Path) -> list[tuple[int, float]]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def test_fsdp_config_on_cpu_processes_is_refused(tmp_path):
    """The launch from the issue: an FSDP accelerate config on CPU processes through scripts/train.py.
    accelerate would train DDP; prefopt stops with exit 2 and one paragraph, before any model loads."""
    out = tmp_path / "refused"
    proc = _launch_two("train.py", "dpo", out, 29521)
    assert proc.returncode != 0
    err = proc.stderr
    assert "prefopt: error:" in err and "asked for FSDP" in err and "MULTI_CPU" in err, err[-3000:]
    assert "train_fsdp_cpu.py" in err  # the fix names the way that does shard
    assert "Traceback" not in err.split("prefopt: error:")[0][-2000:]  # no traceback of prefopt's before it
    assert "Loading weights" not in err and not (out / "manifest.json").exists()


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("algorithm", ["dpo", "kto"])
def test_fsdp2_two_processes_match_one(algorithm, tmp_path):
    one, two = tmp_path / "one", tmp_path / "fsdp2"
    _train_one(algorithm, one)
    proc = _launch_two("train_fsdp_cpu.py", algorithm, two, 29522 if algorithm == "dpo" else 29523)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "reducer.cpp" not in proc.stderr  # DDP's reducer never ran

    m1 = json.loads((one / "manifest.json").read_text())
    m2 = json.loads((two / "manifest.json").read_text())
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    assert m1["data_fingerprint"] == m2["data_fingerprint"]

    # what really ran: accelerate's FSDP2, every policy parameter a DTensor sharded over the 2 ranks
    d1, d2 = m1["distributed"], m2["distributed"]
    assert d1["engine"] == "single" and d1["policy_sharding"]["sharded"] is False
    assert d2["engine"] == "fsdp2" and d2["distributed_type"] == "FSDP" and d2["backend"] == "gloo"
    assert d2["fsdp"]["version"] == 2 and d2["fsdp"]["sharding_strategy"] == "FULL_SHARD"
    assert d2["matches_launcher"] is True and d2["mixed_precision"] == "no"
    pol = d2["policy_sharding"]
    assert pol["params"] > 0 and pol["dtensor_params"] == pol["params"], pol
    assert pol["sharded"] and 0.4 < pol["local_fraction"] < 0.6, pol  # rank 0 holds about half
    assert pol["placements"] == ["Shard(dim=0)"]
    # accelerate's wrapping: one FSDP unit per decoder layer (3) and the root (plus the tail group)
    assert pol["fsdp_units"]["LlamaDecoderLayer"] == 3 and pol["fsdp_units"]["LlamaForCausalLM"] == 1, pol
    # the reference model is a separate, sharded copy (TRL's prepare_fsdp), not a full copy per rank
    ref = d2["reference"]
    assert ref["kind"] == "separate copy" and d1["reference"]["kind"] == "separate copy"
    assert ref["sharding"]["dtensor_params"] == ref["sharding"]["params"] > 0 and ref["sharding"]["sharded"]

    l1, l2 = _losses(one), _losses(two)
    assert [s for s, _ in l1] == [s for s, _ in l2] == list(range(1, STEPS + 1))
    for (_, a), (_, b) in zip(l1, l2):
        assert abs(a - b) <= 1e-4, (l1, l2)

    # the final model was gathered on rank 0 into one ordinary checkpoint, equal to the 1-process one
    w1 = load_file(str(one / "model" / "model.safetensors"))
    w2 = load_file(str(two / "model" / "model.safetensors"))
    common = w1.keys() & w2.keys()
    assert common == w1.keys(), w1.keys() ^ w2.keys()  # FSDP's full state dict may add the tied lm_head
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in common)
    assert worst <= 1e-4, worst

    # ... and it reloads with plain transformers, with the gathered (not the initial) weights
    from prefopt.model.loading import load_trained
    from prefopt.world import reference_checkpoint

    model, _ = load_trained(two)
    sd = model.state_dict()
    assert max(float((sd[k] - w2[k]).abs().max()) for k in common) == 0.0
    start = load_trained(reference_checkpoint("arith"))[0].state_dict()
    assert max(float((w2[k] - start[k]).abs().max()) for k in common if k in start) > 1e-3
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()
