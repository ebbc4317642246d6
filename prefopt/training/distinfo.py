"""How a run was distributed, read from the live process state rather than from the launcher's wishes.

Two entry points, both called from :func:`prefopt.pipeline.run.train`:

* :func:`check_launch` — before any model loads: refuses (exit 2) a launch whose process state cannot
  give what the launcher asked for. accelerate 1.15 applies an FSDP config only to multi-GPU-like
  process states and a DeepSpeed config only off the CPU; a CPU process group (``ACCELERATE_USE_CPU``)
  with ``distributed_type: FSDP`` is silently wrapped in plain DDP (every process holds the full model
  and reference) — the run would "work" and the manifest would lie.
* :func:`describe` — after training, for ``manifest.json``'s ``distributed`` block: the engine (single /
  DDP / FSDP version + sharding strategy / DeepSpeed ZeRO stage), mixed precision, where the reference
  lives (separate copy, adapter-disabled base, precomputed log-probs or prefopt's cache, none), and
  what is really sharded (parameters that are DTensors / ZeRO-3 partitions, and the local share of
  rank 0), so a DDP run cannot pass for an FSDP one.
"""

from __future__ import annotations

import os
from typing import Any

from prefopt.core.errors import PrefoptError
from prefopt.core.runtime import process_state

# accelerate 1.15 (AcceleratorState.__init__) turns ACCELERATE_USE_FSDP into DistributedType.FSDP only
# for these process states; MULTI_CPU and NO keep their type and get DDP / nothing.
FSDP_CAPABLE = (
    "MULTI_GPU",
    "MULTI_XPU",
    "MULTI_NPU",
    "MULTI_MLU",
    "MULTI_SDAA",
    "MULTI_MUSA",
    "MULTI_HPU",
    "MULTI_NEURON",
)


def _flag(env, name: str) -> bool:
    return str(env.get(name, "false")).lower() in ("1", "true", "yes")


def requested(env=None) -> dict[str, Any]:
    """What the launcher asked for, from the variables ``accelerate launch`` sets from its config file."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {"world_size": int(env.get("WORLD_SIZE", "1") or 1)}
    if _flag(env, "ACCELERATE_USE_FSDP"):
        out["engine"] = "fsdp"
        out["fsdp_version"] = int(env.get("FSDP_VERSION", "1") or 1)
    elif _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        out["engine"] = "deepspeed"
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        out["zero_stage"] = int(stage) if stage and stage.isdigit() else None
    else:
        out["engine"] = None  # plain data parallelism or one process: decided by the world size
    if _flag(env, "ACCELERATE_USE_CPU"):
        out["cpu"] = True
    return out


def check_launch(recipe=None, *, state=None, env=None, cuda: bool | None = None) -> None:
    """Refuse a launch whose process state lacks the mode the launcher asked for (exit 2, no model loaded).

    ``state`` defaults to prefopt's accelerate ``PartialState`` (the one :func:`prefopt.core.runtime.world_size`
    uses); ``recipe`` is read for ``training.use_cpu``; ``cuda`` defaults to ``torch.cuda.is_available()``."""
    env = os.environ if env is None else env
    if state is None:
        state = process_state()
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    use_cpu = bool(recipe is not None and recipe.training.get("use_cpu"))
    want = requested(env)
    have = str(getattr(state.distributed_type, "name", state.distributed_type)).split(".")[-1]
    where = "accelerate launch (the --config_file's distributed_type)"
    if want["engine"] == "fsdp" and have not in FSDP_CAPABLE + ("FSDP",):
        cpu = have == "MULTI_CPU" or bool(want.get("cpu"))
        raise PrefoptError(
            f"the launcher asked for FSDP (ACCELERATE_USE_FSDP=true, fsdp_version {want['fsdp_version']}), but "
            f"this process state is {have}"
            + (
                " (CPU processes over gloo): accelerate applies FSDP only to GPU process groups and would "
                "train plain DDP, a full copy of the model (and of the reference) in every process"
                if cpu
                else ": accelerate would not shard anything"
            )
            + ".",
            where=where,
            fix="on GPUs, launch without ACCELERATE_USE_CPU; for DDP on CPU use configs/accelerate/multi_cpu.yaml; "
            "to execute FSDP2 on CPU processes, launch scripts/train_fsdp_cpu.py with "
            "configs/accelerate/fsdp_cpu.yaml (docs/cluster.md).",
        )
    if want["engine"] == "deepspeed" and (have in ("MULTI_CPU", "NO") or want.get("cpu")):
        raise PrefoptError(
            f"the launcher asked for DeepSpeed (ACCELERATE_USE_DEEPSPEED=true, ZeRO stage {want['zero_stage']}), "
            f"but this process state is {have}: accelerate does not use DeepSpeed on CPU processes and would "
            "train without it.",
            where=where,
            fix="run DeepSpeed configs on GPUs (scripts/gpu_check.sh tests them on one); on CPU use "
            "configs/accelerate/multi_cpu.yaml.",
        )
    # transformers' TrainingArguments rebuilds accelerate's state, as CPU processes only with use_cpu /
    # ACCELERATE_USE_CPU: on a machine without CUDA the processes would otherwise each train alone
    alone = int(state.num_processes) == 1 or (not cuda and not (want.get("cpu") or use_cpu))
    if want["world_size"] > 1 and alone:
        raise PrefoptError(
            f"the launcher started {want['world_size']} processes (WORLD_SIZE), but "
            + (
                "this one runs alone (world size 1)"
                if int(state.num_processes) == 1
                else "there is no GPU and "
                "ACCELERATE_USE_CPU is not set, so the Trainer would run each of them alone"
            )
            + ": every process would train the whole batch on its own and write the same run directory.",
            where=where,
            fix="on CPU set ACCELERATE_USE_CPU=true (configs/accelerate/multi_cpu.yaml explains why); on GPUs "
            "check that each process sees a GPU (CUDA_VISIBLE_DEVICES).",
        )


def _name(x) -> str | None:
    if x is None:
        return None
    return str(getattr(x, "name", x)).split(".")[-1]


def sharding(module) -> dict[str, Any] | None:
    """How a module's parameters are held on this rank: how many are FSDP2 DTensors or ZeRO-3
    partitions, and the share of the parameter elements held locally (1.0 = a full copy)."""
    if module is None:
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        DTensor = ()  # noqa: N806
    n = dtensors = zero3 = 0
    total = local = 0
    placements: set[str] = set()
    for p in module.parameters():
        n += 1
        if DTensor and isinstance(p, DTensor):
            dtensors += 1
            total += p.numel()
            local += p.to_local().numel()
            placements.update(repr(pl) for pl in p.placements)
        elif hasattr(p, "ds_numel"):  # DeepSpeed ZeRO-3 partitioned parameter
            zero3 += 1
            total += int(p.ds_numel)
            local += int(p.ds_tensor.numel()) if getattr(p, "ds_tensor", None) is not None else 0
        else:
            total += p.numel()
            local += p.numel()
    units: dict[str, int] = {}
    try:
        from torch.distributed.fsdp import FSDPModule

        for m in module.modules():
            if isinstance(m, FSDPModule):  # fully_shard renames the class FSDP<Name>
                name = type(m).__name__.removeprefix("FSDP")
                units[name] = units.get(name, 0) + 1
    except ImportError:  # pragma: no cover
        pass
    return {
        "params": n,
        "fsdp_units": units,  # module class → how many fully_shard was applied to (decoder layers, root, ...)
        "dtensor_params": dtensors,
        "zero3_params": zero3,
        "placements": sorted(placements),
        "numel": total,
        "local_numel": local,
        "local_fraction": round(local / total, 6) if total else None,
        "sharded": local < total,
    }


def _engine(accelerator) -> dict[str, Any]:
    dt = _name(accelerator.distributed_type)
    n = int(accelerator.num_processes)
    state = accelerator.state
    out: dict[str, Any] = {}
    if dt == "FSDP":
        plugin = state.fsdp_plugin
        version = int(getattr(plugin, "fsdp_version", 1) or 1)
        if version == 2:
            raf = plugin.reshard_after_forward
            strategy = "FULL_SHARD" if raf is True else "SHARD_GRAD_OP" if raf is False else _name(raf)
        else:
            strategy = _name(plugin.sharding_strategy)
        wrap = plugin.auto_wrap_policy
        out = {
            "engine": f"fsdp{version}",
            "fsdp": {
                "version": version,
                "sharding_strategy": strategy,
                "reshard_after_forward": plugin.reshard_after_forward
                if isinstance(plugin.reshard_after_forward, bool)
                else _name(plugin.reshard_after_forward),
                "auto_wrap_policy": getattr(getattr(wrap, "func", wrap), "__name__", None) if wrap else None,
                "state_dict_type": _name(plugin.state_dict_type),
                "cpu_offload": bool(getattr(plugin.cpu_offload, "offload_params", False))
                or type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy",
                "cpu_ram_efficient_loading": bool(plugin.cpu_ram_efficient_loading),
                "activation_checkpointing": bool(plugin.activation_checkpointing),
            },
        }
    elif dt == "DEEPSPEED":
        plugin = state.deepspeed_plugin
        zero = (getattr(plugin, "deepspeed_config", None) or {}).get("zero_optimization", {})
        out = {
            "engine": f"deepspeed-zero{plugin.zero_stage}",
            "deepspeed": {
                "zero_stage": plugin.zero_stage,
                "offload_optimizer": (zero.get("offload_optimizer") or {}).get("device", "none"),
                "offload_param": (zero.get("offload_param") or {}).get("device", "none"),
            },
        }
    elif n > 1:
        out = {"engine": "ddp"}
    else:
        out = {"engine": "single"}
    out.update(
        {
            "distributed_type": dt,
            "num_processes": n,
            "backend": getattr(state, "backend", None),
            "device": str(accelerator.device),
        }
    )
    return out


def _reference(trainer, config, uses_reference: bool) -> dict[str, Any]:
    if not uses_reference:
        return {"kind": "none"}
    if getattr(trainer, "reference_cache_config", None):
        return {
            "kind": "precomputed cache",
            "detail": "prefopt's reference log-prob cache (prefopt/training/refcache.py)",
        }
    if getattr(config, "precompute_ref_log_probs", False):
        return {"kind": "precomputed", "detail": "TRL precompute_ref_log_probs: one pass before training"}
    ref = getattr(trainer, "ref_model", None)
    if ref is None:
        from peft import PeftModel

        model = getattr(trainer, "model", None)
        if isinstance(model, PeftModel) or hasattr(model, "disable_adapter"):
            return {"kind": "adapter-disabled base", "detail": "PEFT disable_adapter: no second copy"}
        return {"kind": "unknown"}
    out: dict[str, Any] = {"kind": "separate copy", "wrapper": type(ref).__name__}
    inner = getattr(ref, "module", ref)  # a DeepSpeed inference engine holds the module
    out["sharding"] = sharding(inner)
    return out


def describe(trainer, uses_reference: bool) -> dict[str, Any]:
    """The ``distributed`` block of ``manifest.json`` (see the module docstring). Call on every rank while
    the trained model is still wrapped (before any unwrapping); rank 0's view is what is recorded."""
    accelerator = trainer.accelerator
    config = trainer.args
    out = _engine(accelerator)
    want = out["requested"] = requested()
    # check_launch refused the known mismatches before the model loaded; record that the engine agrees
    out["matches_launcher"] = want["engine"] is None or out["engine"].startswith(want["engine"])
    out["mixed_precision"] = str(accelerator.mixed_precision)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    out["trainable_param_dtype"] = str(trainable[0].dtype).replace("torch.", "") if trainable else None
    out["policy_sharding"] = sharding(trainer.model)
    out["reference"] = _reference(trainer, config, uses_reference)
    return out
