#!/usr/bin/env python
"""One training step of every trainer prefopt uses; each process saves the gradients it would apply.

    python scripts/grad_sync_check.py --out DIR                       # 1 process, global batch 8
    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/multi_cpu.yaml \
        scripts/grad_sync_check.py --out DIR                          # 2 processes, 4 each

Each trainer is built the way ``prefopt train`` builds it (quickstart recipe → prefopt data and
tokenisation → ``prefopt.pipeline.run.build_trainer``: the prefopt subclasses of TRL's DPO, KTO, ORPO and CPO
trainers), takes one optimizer step on the same global batch, and at ``on_pre_optimizer_step`` (after
backward, the gradient all-reduce and clipping, before the update) saves every parameter's gradient to
``DIR/grads-rank{R}-of-{N}.pt``. tests/pipeline/test_grad_sync.py compares rank 0, rank 1 and one process: a trainer
that skips DDP's gradient sync (trl#7245: DPO/KTO with the Liger kernel) gives each rank its own
gradient. ``dpo-nosync`` is the negative control: the DPO step run under DDP's ``no_sync``, which must
differ across ranks, so the comparison is shown able to fail.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALGORITHMS = ["dpo", "ipo", "kto", "orpo", "simpo"]
GLOBAL_BATCH = 8


class GradCapture:
    """A TrainerCallback (built lazily so that importing this file does not import transformers)."""

    @staticmethod
    def make(store: dict):
        from transformers import TrainerCallback

        class _Capture(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                store.update(
                    {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
                )

        return _Capture()


def one_step(algorithm: str, workdir: Path, n_processes: int, no_sync: bool = False) -> dict:
    from prefopt.config.recipe import load_recipe
    from prefopt.model.loading import load_model, tokenizer_for
    from prefopt.pipeline.run import build_trainer, prepare_data, resolve_batch

    overrides = {
        "training.per_device_train_batch_size": GLOBAL_BATCH // n_processes,
        "training.global_batch_size": GLOBAL_BATCH,
        "training.max_steps": 1,
        "training.warmup_steps": 0,
        "training.learning_rate": 1e-3,
        "training.logging_steps": 1,
        "training.save_strategy": "'no'",
        "training.report_to": "[]",
        "training.disable_tqdm": "true",
        "data.train.0.size": 16,
        "evaluation.enabled": "false",
    }
    recipe = load_recipe(
        REPO / "configs" / "recipes" / "quickstart" / f"{algorithm}.yaml",
        [f"{k}={v}" for k, v in overrides.items()],
    )
    training = resolve_batch(recipe, n_processes)
    tokenizer = tokenizer_for(recipe.model)
    train_tok, _, _, _, _ = prepare_data(recipe, tokenizer)
    model, tokenizer = load_model(recipe.model, seed=recipe.seed, tokenizer=tokenizer)
    grads: dict = {}
    trainer = build_trainer(
        recipe,
        model,
        tokenizer,
        train_tok,
        None,
        output_dir=str(workdir / algorithm),
        callbacks=[GradCapture.make(grads)],
        training=training,
    )
    if no_sync:  # the bug class of trl#7245, on purpose: backward without DDP's all-reduce
        step = trainer.training_step

        def training_step(model, *args, **kwargs):
            ctx = model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()
            with ctx:
                return step(model, *args, **kwargs)

        trainer.training_step = training_step
    result = trainer.train()
    assert grads, f"{algorithm}: no gradient was captured"
    return {"grads": grads, "loss": float(result.training_loss), "trainer": type(trainer).__name__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from prefopt.core.runtime import process_state

    state = process_state()
    rank, n = state.process_index, state.num_processes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for algorithm in args.algorithms.split(","):
        results[algorithm] = one_step(algorithm, out / "work", n)
    if n > 1:
        results["dpo-nosync"] = one_step("dpo", out / "work", n, no_sync=True)
    torch.save(results, out / f"grads-rank{rank}-of-{n}.pt")
    print(
        f"rank {rank}/{n}: " + ", ".join(f"{a} loss {r['loss']:.6f}" for a, r in results.items()), flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
