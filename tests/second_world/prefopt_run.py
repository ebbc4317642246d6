"""prefopt at the study's settings, as a user writes it: one recipe per algorithm (``prefopt train``),
the SFT model loaded by its local path, the user's JSONL mapped by a ``columns:`` mapping of the
generic ``jsonl`` source, KTO on the same paired file with ``transform: unpair``. Everything else is
prefopt's default (dedupe on, no KTO weights); the only section added is ``evaluation: {enabled:
false}``, because the independent evaluator (:mod:`second_world.evaluate`) scores every model and
prefopt's own end-of-run evaluation does not change the trained weights.

The recipes are plain YAML text and the run is a subprocess (``python -m prefopt.cli train``); this
module does not import prefopt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .trl_baseline import (
    BATCH_SIZE,
    BETA,
    EPOCHS,
    LAM,
    LEARNING_RATE,
    SIMPO_BETA,
    SIMPO_GAMMA_BETA_RATIO,
    TAU,
)

REPO = Path(__file__).resolve().parents[2]

LOSS = {
    "dpo": {"beta": BETA},
    "ipo": {"tau": TAU},
    "kto": {"beta": BETA},
    "orpo": {"lam": LAM},
    "simpo": {"beta": SIMPO_BETA, "gamma_beta_ratio": SIMPO_GAMMA_BETA_RATIO},
}


def recipe_text(
    algorithm: str,
    model_dir: str | Path,
    pairs: str | Path,
    seed: int,
    shuffle: bool = True,
    loss: dict | None = None,
) -> str:
    """The recipe a user writes. For investigations only: ``shuffle=False`` keeps the file's row order, so
    that the trainer's seeded sampler draws the same batches as plain TRL's on the same file; ``loss``
    adds or replaces `loss:` keys (e.g. SimPO's ``sft_weight``)."""
    loss = "\n".join(f"  {k}: {v}" for k, v in {**LOSS[algorithm], **(loss or {})}.items())
    transform = "  transform: unpair          # KTO trains on unpaired rows\n" if algorithm == "kto" else ""
    if not shuffle:
        transform += "  shuffle: false\n"
    return f"""# second world (tests/second_world): {algorithm} at plain-TRL settings on a user's own model and data
algorithm: {algorithm}
seed: {seed}

model:
  name: {Path(model_dir).resolve()}

data:
  train:
    - source: jsonl
      path: {Path(pairs).resolve()}
      columns: {{prompt: question, chosen: good, rejected: bad}}
{transform}
loss:
{loss}

training:
  learning_rate: {LEARNING_RATE}
  num_train_epochs: {EPOCHS}
  per_device_train_batch_size: {BATCH_SIZE}

evaluation:
  enabled: false
"""


def train_command(recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "prefopt.cli", "train", "--config", str(recipe), "--output-dir", str(out)]


def start(
    algorithm: str,
    model_dir,
    pairs,
    out: str | Path,
    seed: int,
    shuffle: bool = True,
    loss: dict | None = None,
) -> subprocess.Popen:
    """Write the recipe next to the run and start ``prefopt train`` (one torch thread)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = out.parent / f"{out.name}.yaml"
    recipe.write_text(recipe_text(algorithm, model_dir, pairs, seed, shuffle, loss))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen(
        train_command(recipe, out), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def data_report(out: str | Path) -> dict:
    p = Path(out) / "data_report.json"
    return json.loads(p.read_text()) if p.exists() else {}
