"""Plain TRL at the study's settings, as a TRL user writes it: the user's pairs loaded with
``datasets``, their columns renamed to TRL's (``question``/``good``/``bad`` → ``prompt``/``chosen``/
``rejected``), the SFT model loaded by path, TRL's own tokenisation, TRL's defaults otherwise.

=========  =====================================================================================
DPO        ``trl.DPOTrainer``, ``DPOConfig(loss_type=["sigmoid"], beta=0.1)``
IPO        ``trl.DPOTrainer``, ``DPOConfig(loss_type=["ipo"], beta=0.1)`` (τ is TRL's ``beta``)
KTO        ``trl.KTOTrainer``, ``KTOConfig(beta=0.1)``, the pairs through TRL's own
           ``unpair_preference_dataset`` (chosen → label True, rejected → label False)
ORPO       ``trl.experimental.orpo.ORPOTrainer``, ``ORPOConfig(beta=0.1)`` (λ is TRL's ``beta``)
SimPO      ``trl.experimental.cpo.CPOTrainer``, ``CPOConfig(loss_type="simpo", beta=2.0,
           simpo_gamma=0.5)`` (γ = β·γ/β = 2 × 0.25; ``cpo_alpha`` left at TRL's default)
=========  =====================================================================================

Shared: ``learning_rate=1e-4``, ``num_train_epochs=1``, ``per_device_train_batch_size=32``, the seed.
One change from TRL's defaults, because the default cannot run here: ``bf16=False`` (TRL's configs
default to bf16 mixed precision, and on a CPU the config refuses to build: "Your setup doesn't support
bf16/gpu"; prefopt trains these models in float32 too).

Run as ``python -m second_world.trl_baseline --algorithm dpo --model DIR --pairs FILE --out DIR
--seed 42`` (with ``tests/`` on ``PYTHONPATH``); the trained model is saved to ``DIR/model``. Several
algorithms (``--algorithm dpo ipo --out 'runs/trl-{algorithm}'``) train one after another in one process:
each builds its model, data and trainer afresh and the trainer seeds itself, so every run is the same
as in a process of its own (this saves the imports in the slow test).
No prefopt code is imported here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ALGORITHMS = ("dpo", "ipo", "kto", "orpo", "simpo")

# the study's settings (what users copy from the papers and TRL's docs)
LEARNING_RATE = 1e-4
EPOCHS = 1
BATCH_SIZE = 32
BETA = 0.1  # DPO β, KTO β
TAU = 0.1  # IPO τ
LAM = 0.1  # ORPO λ
SIMPO_BETA = 2.0
SIMPO_GAMMA_BETA_RATIO = 0.25


def load_pairs(path: str | Path):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(path), split="train")
    return ds.rename_columns({"question": "prompt", "good": "chosen", "bad": "rejected"})


def train(
    algorithm: str,
    model_dir: str | Path,
    pairs: str | Path,
    out: str | Path,
    seed: int,
    overrides: dict | None = None,
    shuffle: bool = False,
) -> dict:
    """Train one algorithm with plain TRL and save the model to ``out/model``.

    For investigations only (the study's plain-TRL column uses neither): ``overrides`` replace config
    fields; ``shuffle`` shuffles the training rows with the seed before the trainer sees them (for KTO,
    whose sampler is sequential, this mixes desirable and undesirable rows in every batch)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {algorithm!r}")
    out = Path(out)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    dataset = load_pairs(pairs)
    common = dict(
        output_dir=str(out / "trl-run"),
        learning_rate=LEARNING_RATE,
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=BATCH_SIZE,
        seed=seed,
        bf16=False,  # TRL's default (bf16 mixed precision) needs a GPU
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    if algorithm in ("dpo", "ipo"):
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        loss = (
            {"loss_type": ["sigmoid"], "beta": BETA}
            if algorithm == "dpo"
            else {"loss_type": ["ipo"], "beta": TAU}
        )
    elif algorithm == "kto":
        from trl import KTOConfig as Config
        from trl import KTOTrainer as Trainer
        from trl.data_utils import unpair_preference_dataset

        loss = {"beta": BETA}
        dataset = unpair_preference_dataset(dataset)  # chosen -> label True, rejected -> label False
    elif algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer

        loss = {"beta": LAM}
    else:
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer

        loss = {"loss_type": "simpo", "beta": SIMPO_BETA, "simpo_gamma": SIMPO_BETA * SIMPO_GAMMA_BETA_RATIO}
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    kwargs = {**common, **loss, **(overrides or {})}
    trainer = Trainer(model=model, args=Config(**kwargs), train_dataset=dataset, processing_class=tokenizer)
    t0 = time.time()
    result = trainer.train()
    seconds = time.time() - t0
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    info = {
        "algorithm": algorithm,
        "seed": seed,
        "overrides": overrides or {},
        "shuffle": shuffle,
        "steps": result.global_step,
        "train_loss": result.training_loss,
        "train_seconds": round(seconds, 1),
        "log": trainer.state.log_history,
    }
    (out / "trl_run.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--algorithm",
        required=True,
        nargs="+",
        choices=ALGORITHMS,
        help="one or more: several train one after another in this process (--out then holds {algorithm})",
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field (JSON value)",
    )
    ap.add_argument("--shuffle", action="store_true", help="shuffle the training rows with the seed first")
    a = ap.parse_args(argv)
    overrides = {}
    for item in a.set:
        k, _, v = item.partition("=")
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    import torch

    torch.set_num_threads(1)
    if len(a.algorithm) > 1 and "{algorithm}" not in a.out:
        ap.error("with several --algorithm values, --out must contain {algorithm}")
    for algorithm in a.algorithm:
        out = a.out.format(algorithm=algorithm)
        info = train(algorithm, a.model, a.pairs, out, a.seed, overrides, a.shuffle)
        print(
            f"trl {algorithm} seed {a.seed}: {info['steps']} steps in {info['train_seconds']} s", flush=True
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
