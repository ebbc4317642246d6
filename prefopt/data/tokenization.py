"""One tokenisation for every trainer, for generation and for evaluation.

TRL's trainers disagree on how a (prompt, completion) becomes token ids: ``DPOTrainer``/``KTOTrainer``
tokenise prompt+completion jointly and split at the common prefix, while ``trl.experimental`` ORPO/CPO
prepend BOS to every prompt. A model warm-started one way and trained another sees a shifted input
distribution (on the ground-truth world ORPO's accuracy fell from 0.46 to 0.15 that way). prefopt
therefore tokenises once, here, and hands every trainer pre-tokenised ids (the trainer subclasses in
:mod:`prefopt.training.trainers` skip TRL's own tokenisation).

The rule (documented in docs/data.md):

* **prompt ids** — exactly what :func:`encode_prompt` returns, which is also what generation feeds
  the model. Text prompts use the tokenizer's own special-token convention
  (``add_special_tokens=True``: BOS for Llama-style tokenizers, nothing for the builtin one);
  conversational prompts are rendered by the chat template with ``add_generation_prompt=True``.
* **completion ids** — the completion tokenised on its own (``add_special_tokens=False``) and
  appended. Text completions get EOS appended; conversational completions are the chat template's
  rendering of the assistant turn(s) (which end the turn themselves).
* Truncation: a prompt longer than ``max_prompt_length`` keeps its *last* tokens (the part closest to
  the reply); a completion that does not fit in ``max_length`` keeps its *first* tokens; a prompt that
  leaves no room for any completion token drops the row (counted in the drop report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefopt.core.errors import PrefoptError


def is_messages(value: Any) -> bool:
    return isinstance(value, list) and (
        len(value) == 0 or (isinstance(value[0], dict) and "role" in value[0])
    )


def require_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise PrefoptError(
            "the data is conversational (messages) but the tokenizer has no chat template.",
            where="model.tokenizer",
            fix="set model.chat_template to a Jinja template, use a chat/instruct tokenizer, or convert the "
            "data to plain text.",
        )


def render_prompt(tokenizer, prompt) -> str:
    """The prompt as the model sees it (text), ready for the completion to follow."""
    if is_messages(prompt):
        require_chat_template(tokenizer)
        last = prompt[-1]["role"] if prompt else "user"
        if last == "assistant":
            return tokenizer.apply_chat_template(prompt, tokenize=False, continue_final_message=True)
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt — identical for training, generation and evaluation."""
    if is_messages(prompt):
        return tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def encode_completion(tokenizer, prompt, completion) -> list[int]:
    """Token ids of a completion that follows ``prompt`` (EOS / end-of-turn included)."""
    if is_messages(completion):
        if not is_messages(prompt):
            raise PrefoptError("a conversational completion needs a conversational prompt (messages).")
        require_chat_template(tokenizer)
        prompt_text = render_prompt(tokenizer, prompt)
        full_text = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
        if not full_text.startswith(prompt_text):
            raise PrefoptError(
                "the chat template renders the prompt differently alone than followed by the reply, so the "
                "reply's tokens cannot be separated from the prompt's.",
                where="model.chat_template",
                fix="use a template whose add_generation_prompt rendering is a prefix of the full conversation.",
            )
        return tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    return ids


@dataclass
class TruncationStats:
    """How many sequences were cut and where (reported with the drop report)."""

    prompts_truncated: int = 0
    completions_truncated: int = 0
    dropped_prompt_too_long: int = 0
    examples: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "prompts_truncated_left": self.prompts_truncated,
            "completions_truncated_right": self.completions_truncated,
            "dropped_prompt_fills_max_length": self.dropped_prompt_too_long,
        }


def _truncate(prompt_ids, completions, max_length, max_prompt_length, stats: TruncationStats | None):
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
        if stats is not None:
            stats.prompts_truncated += 1
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room <= 0:
            return None
        out = []
        for c in completions:
            if len(c) > room:
                c = c[:room]
                if stats is not None:
                    stats.completions_truncated += 1
            out.append(c)
        completions = out
    return prompt_ids, completions


def tokenize_paired(example, tokenizer, max_length=None, max_prompt_length=None, stats=None):
    """``{prompt, chosen, rejected}`` → ``{prompt_ids, chosen_ids, rejected_ids}`` or None (dropped)."""
    p = encode_prompt(tokenizer, example["prompt"])
    c = encode_completion(tokenizer, example["prompt"], example["chosen"])
    r = encode_completion(tokenizer, example["prompt"], example["rejected"])
    res = _truncate(p, [c, r], max_length, max_prompt_length, stats)
    if res is None:
        return None
    p, (c, r) = res
    return {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}


def tokenize_unpaired(example, tokenizer, max_length=None, max_prompt_length=None, stats=None):
    """``{prompt, completion, label}`` → ``{prompt_ids, completion_ids, label}`` or None (dropped)."""
    p = encode_prompt(tokenizer, example["prompt"])
    c = encode_completion(tokenizer, example["prompt"], example["completion"])
    res = _truncate(p, [c], max_length, max_prompt_length, stats)
    if res is None:
        return None
    p, (c,) = res
    return {"prompt_ids": p, "completion_ids": c, "label": bool(example["label"])}


def tokenize_dataset(dataset, kind: str, tokenizer, max_length=None, max_prompt_length=None, report=None):
    """Tokenise a canonical dataset (paired or unpaired). Rows whose prompt leaves no room for a
    completion are dropped and counted in ``report`` (a :class:`prefopt.data.report.DropReport`-like
    object with ``drop(reason, index)``); truncation counts are added to it as well."""
    from datasets import Dataset

    fn = tokenize_paired if kind == "paired" else tokenize_unpaired
    stats = TruncationStats()
    rows = []
    keep_cols = [
        c
        for c in dataset.column_names
        if c not in ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids")
    ]
    for i, ex in enumerate(dataset):
        out = fn(ex, tokenizer, max_length, max_prompt_length, stats)
        if out is None:
            stats.dropped_prompt_too_long += 1
            if report is not None:
                report.drop("prompt_fills_max_length", i)
            continue
        row = {k: ex[k] for k in keep_cols}
        row.update(out)
        rows.append(row)
    if report is not None and hasattr(report, "note_truncation"):
        report.note_truncation(stats.as_dict())
    if not rows:
        raise PrefoptError(
            f"every example was removed by truncation: all {len(dataset)} prompts fill max_length={max_length}.",
            where="training.max_length",
            fix="raise training.max_length or lower training.max_prompt_length so completions fit.",
        )
    return Dataset.from_list(rows), stats
