#!/usr/bin/env python
"""`prefopt train` under accelerate's own FSDP2 code path on CPU processes over gloo (for tests).

accelerate 1.15 applies FSDP only when the process state is a multi-*accelerator* one:
``AcceleratorState.__init__`` turns ``ACCELERATE_USE_FSDP=true`` into ``DistributedType.FSDP`` only
for MULTI_GPU / MULTI_XPU / MULTI_NPU / ... . A CPU launch (``ACCELERATE_USE_CPU=true``) gets
``DistributedType.MULTI_CPU`` and is wrapped in plain DDP without a word, whatever the FSDP config says.
``scripts/train.py`` refuses that combination (exit 2, see prefopt/training/distinfo.py).

This entry point lets accelerate take its FSDP branch: just before transformers' Trainer builds its
Accelerator, the (gloo, CPU) process state's distributed type is set to MULTI_GPU, so the Accelerator
becomes ``DistributedType.FSDP`` with the launcher's FSDP plugin; everything after that is accelerate's
and TRL's unchanged code:
``fsdp2_prepare_model`` (``fully_shard`` per decoder layer, the tail group, the root) for the policy,
``trl.models.prepare_fsdp`` for the reference model, ``Accelerator.get_state_dict`` to gather the
full weights on rank 0 when the model is saved. The device stays ``cpu`` and the backend ``gloo``.

    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/fsdp_cpu.yaml \
        scripts/train_fsdp_cpu.py --config configs/recipes/quickstart/dpo.yaml

It exists to execute the FSDP2 path without a GPU (tests/pipeline/test_fsdp2.py); it is not a way to train fast.
"""

import os
import sys


def _fsdp_capable_state() -> None:
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)  # the gloo group the launcher set up (the call prefopt makes too)
    if state.distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    elif state.distributed_type not in (DistributedType.MULTI_GPU, DistributedType.FSDP):
        sys.exit(
            f"train_fsdp_cpu.py: expected a CPU process group (MULTI_CPU), found {state.distributed_type}; "
            "set ACCELERATE_USE_CPU=true and launch 2 or more processes (configs/accelerate/fsdp_cpu.yaml)."
        )


def enable_fsdp_on_cpu() -> None:
    """Make accelerate's FSDP branch apply to this CPU process group. Call before any Trainer exists.

    The state is set twice: now (so that prefopt's launch check sees the state accelerate will act on)
    and again just before ``Trainer.create_accelerator_and_postprocess`` builds the Accelerator, because
    transformers' ``TrainingArguments`` resets accelerate's state and rebuilds it as MULTI_CPU."""
    from transformers import Trainer

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        sys.exit(
            "train_fsdp_cpu.py: launch it with an FSDP accelerate config (configs/accelerate/fsdp_cpu.yaml)."
        )
    _fsdp_capable_state()
    original = Trainer.create_accelerator_and_postprocess

    def create_accelerator_and_postprocess(self):
        _fsdp_capable_state()
        return original(self)

    Trainer.create_accelerator_and_postprocess = create_accelerator_and_postprocess


if __name__ == "__main__":
    enable_fsdp_on_cpu()
    from prefopt.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
