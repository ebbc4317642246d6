"""A recipe's data as the trainer receives it: canonical rows (:func:`prefopt.data.transforms.prepare`,
with the drop report) tokenised by prefopt's one tokenisation (:mod:`prefopt.data.fast_tokenize`), and a
cache of such datasets shared by runs that would tokenise identically (a sweep's points)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefopt.config.algorithms import get_spec
from prefopt.config.recipe import Recipe
from prefopt.core.runtime import world_size
from prefopt.data.fast_tokenize import tokenize_dataset_fast
from prefopt.data.transforms import prepare


def prepare_data(recipe: Recipe, tokenizer, report_dir: Path | None = None):
    """Canonical data → tokenised datasets for the trainer. Returns (train, eval, canonical_eval, report)."""
    kind = get_spec(recipe.algorithm).data_kind
    base_dir = recipe.source_path.parent if recipe.source_path else None
    train_ds, eval_ds, report = prepare(
        recipe.data.train, recipe.data.eval, recipe.data, recipe.algorithm, base_dir, recipe.seed
    )
    max_length = recipe.training.get("max_length")
    max_prompt_length = recipe.training.get("max_prompt_length")
    # one process tokenises with worker processes; under accelerate every rank tokenises the same rows
    # itself (deterministic), without spawning more workers
    num_proc = None if world_size() == 1 else 1
    train_tok, _ = tokenize_dataset_fast(
        train_ds, kind, tokenizer, max_length, max_prompt_length, report, num_proc=num_proc
    )
    eval_tok = None
    if eval_ds is not None and len(eval_ds):
        eval_tok, _ = tokenize_dataset_fast(
            eval_ds, kind, tokenizer, max_length, max_prompt_length, report, num_proc=num_proc
        )
    if recipe.data.strict:  # truncation drops count too
        report.check_strict(where=f"{recipe.source_path or 'recipe'}: data (strict: true)")
    return train_tok, eval_tok, train_ds, eval_ds, report


class TokenizedCache:
    """Tokenised datasets shared by points that would tokenise identically."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._store: dict[str, tuple] = {}
        self.hits = 0

    @staticmethod
    def key(recipe) -> str:
        k = {
            "data": recipe.data.model_dump(mode="json"),
            "kind": get_spec(recipe.algorithm).data_kind,
            "seed": recipe.seed,
            "tokenizer": recipe.model.tokenizer or recipe.model.name,
            "chat_template": recipe.model.chat_template,
            "max_length": recipe.training.get("max_length"),
            "max_prompt_length": recipe.training.get("max_prompt_length"),
            "source": str(recipe.source_path.parent) if recipe.source_path else None,
        }
        return hashlib.sha256(json.dumps(k, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def get(self, recipe, tokenizer):
        if not self.enabled:
            return prepare_data(recipe, tokenizer)
        key = self.key(recipe)
        if key in self._store:
            self.hits += 1
            return self._store[key]
        self._store[key] = prepare_data(recipe, tokenizer)
        return self._store[key]
