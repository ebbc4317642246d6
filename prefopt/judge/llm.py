"""The ``llm`` judge: a local causal LM asked which of two replies is better, in both orders.

For each pair the judge prompt is rendered twice from ``template`` — reply a in position A and reply b
in position B, then swapped — and the model answers greedily (through the transformers generation
engine; a chat template is used when the tokenizer has one, unless ``chat: false``). Each answer is
parsed for a label (``labels``, default ``A``/``B``; ``tie_label`` if ties are allowed) at its start.

The verdict counts only when both orders name the same reply. Otherwise there is **no verdict**, with
its reason: ``unparseable`` when either answer names no label, ``inconsistent`` when the two orders
disagree (the judge followed the position, not the content). Nothing is guessed; the counts are in
:func:`prefopt.judge.base.tally`, and :func:`prefopt.judge.agreement.position_bias` reads the
per-order choices each verdict keeps (``Verdict.positions``).

The answering model is pluggable: ``LLMJudge(complete=fn)`` takes any ``fn(list_of_judge_prompts) ->
list_of_answers`` (tests use a deliberately biased stub); built from a ``judge:`` block it is the
engine over ``model:`` (any model source prefopt loads: ``builtin:``, ``world:``, a path, a hub id).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field

from prefopt.config.recipe import ModelSection
from prefopt.core.errors import PrefoptError
from prefopt.judge.base import Judge, JudgeSection, Verdict, register_judge_type
from prefopt.model.engines.hf import TransformersEngine
from prefopt.model.loading import load_model

DEFAULT_TEMPLATE = (
    "Two replies to the same prompt follow. Decide which reply is better: more correct, more helpful, "
    "and following the prompt's instructions. Answer with a single letter.\n\n"
    "Prompt: {prompt}\n\n"
    "Reply A: {reply_a}\n\n"
    "Reply B: {reply_b}\n\n"
    "Better reply (A or B):"
)
FIELDS = ("prompt", "reply_a", "reply_b")


class LLMSection(JudgeSection):
    type: Literal["llm"] = "llm"
    model: str = Field(
        ..., description="Model source: builtin:<name>, world:<task>, a local path or a hub id."
    )
    template: str = Field(DEFAULT_TEMPLATE, description="Judge prompt with {prompt}, {reply_a}, {reply_b}.")
    labels: list[str] = Field(
        ["A", "B"], min_length=2, max_length=2, description="Labels of the two positions."
    )
    tie_label: str | None = Field(None, description="A label meaning 'equally good' (off by default).")
    pattern: str | None = Field(
        None, description="Regex with one group capturing the label; default: a label at the answer's start."
    )
    chat: Literal["auto", True, False] = Field("auto", description="Wrap the judge prompt as a user message.")
    max_new_tokens: int = Field(8, gt=0)
    batch_size: int = Field(32, gt=0)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    seed: int = Field(0, description="Seed for builtin models' weights (greedy answers use no randomness).")

    def check(self, where: str) -> None:
        try:
            rendered = self.template.format(prompt="", reply_a="", reply_b="")
        except (KeyError, IndexError, ValueError) as err:
            raise PrefoptError(
                f"the judge template cannot be filled ({type(err).__name__}: {err}).",
                where=f"{where}.template",
                fix="use only the fields {prompt}, {reply_a}, {reply_b}; write literal braces as {{ and }}.",
            ) from None
        del rendered
        missing = [f for f in FIELDS if "{" + f + "}" not in self.template]
        if missing:
            raise PrefoptError(
                f"the judge template lacks {', '.join('{' + m + '}' for m in missing)}.",
                where=f"{where}.template",
                fix="the template must show the prompt and both replies: {prompt}, {reply_a}, {reply_b}.",
            )
        labels = [*self.labels, *([self.tie_label] if self.tie_label else [])]
        if len(set(labels)) != len(labels) or any(not x.strip() for x in labels):
            raise PrefoptError(f"labels {labels} must be distinct and non-empty.", where=f"{where}.labels")
        if self.pattern is not None:
            try:
                rx = re.compile(self.pattern)
            except re.error as err:
                raise PrefoptError(
                    f"pattern is not a valid regex ({err}).", where=f"{where}.pattern"
                ) from None
            if rx.groups < 1:
                raise PrefoptError(
                    "pattern has no group; the first group must capture the label.", where=f"{where}.pattern"
                )


def default_pattern(labels: Sequence[str]) -> re.Pattern:
    """A label at the start of the answer, after optional punctuation and a word like 'Reply'."""
    alts = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
    return re.compile(
        r"^[\s\W]*(?:(?i:reply|response|answer|option|better)[\s:]*)?\(?\s*(" + alts + r")(?![\w])"
    )


def as_text(x: Any) -> str:
    """A prompt or reply as text: messages become 'role: content' lines (replies: their content)."""
    if isinstance(x, list) and (not x or isinstance(x[0], dict)):
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in x)
    return str(x)


class LLMJudge(Judge):
    type = "llm"
    gives_scores = False

    def __init__(
        self,
        complete: Callable[[list], list[str]],
        *,
        name: str,
        template: str = DEFAULT_TEMPLATE,
        labels: Sequence[str] = ("A", "B"),
        tie_label: str | None = None,
        pattern: str | None = None,
        chat: bool = False,
        where: str = "judge",
    ):
        super().__init__(name, where=where)
        self.complete = complete
        self.template = template
        self.labels = tuple(labels)
        self.tie_label = tie_label
        choices = [*self.labels, *([tie_label] if tie_label else [])]
        self.pattern = re.compile(pattern) if pattern else default_pattern(choices)
        self.chat = chat

    def render(self, prompt, first, second) -> Any:
        text = self.template.format(prompt=as_text(prompt), reply_a=as_text(first), reply_b=as_text(second))
        return [{"role": "user", "content": text}] if self.chat else text

    def parse(self, answer: str) -> str | None:
        """The position an answer names: ``"A"``, ``"B"``, ``"tie"`` or ``None`` (unparseable)."""
        if not isinstance(answer, str):
            return None
        m = self.pattern.search(answer)
        if not m:
            return None
        label = m.group(1)
        if label == self.labels[0]:
            return "A"
        if label == self.labels[1]:
            return "B"
        if self.tie_label is not None and label == self.tie_label:
            return "tie"
        return None

    def compare(
        self, prompts: Sequence[Any], replies_a: Sequence[Any], replies_b: Sequence[Any]
    ) -> list[Verdict]:
        n = len(prompts)
        if len(replies_a) != n or len(replies_b) != n:
            raise ValueError("prompts, replies_a and replies_b differ in length")
        queries = [self.render(p, a, b) for p, a, b in zip(prompts, replies_a, replies_b)]
        queries += [self.render(p, b, a) for p, a, b in zip(prompts, replies_a, replies_b)]
        answers = self.guarded(lambda q: list(self.complete(q)), queries, indices=list(range(n)) * 2)
        return [self._verdict(answers[i], answers[n + i]) for i in range(n)]

    def _verdict(self, first: str, second: str) -> Verdict:
        c1, c2 = self.parse(first), self.parse(second)
        raw = (
            first if isinstance(first, str) else repr(first),
            second if isinstance(second, str) else repr(second),
        )
        if c1 is None or c2 is None:
            return Verdict(None, "unparseable", positions=(c1, c2), raw=raw)
        # order 1 shows (a, b): A → a; order 2 shows (b, a): A → b
        r1 = {"A": "a", "B": "b", "tie": "tie"}[c1]
        r2 = {"A": "b", "B": "a", "tie": "tie"}[c2]
        if r1 != r2:
            return Verdict(None, "inconsistent", positions=(c1, c2), raw=raw)
        return Verdict(r1, positions=(c1, c2), raw=raw)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "labels": list(self.labels), "tie_label": self.tie_label}


def engine_completer(model, tokenizer, *, max_new_tokens: int = 8, batch_size: int = 32):
    """``fn(judge_prompts) -> answers``: greedy replies from the transformers engine."""
    engine = TransformersEngine(model, tokenizer, batch_size=batch_size)

    def complete(queries: list) -> list[str]:
        outs = engine.generate(queries, k=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=0)
        return [o[0].text for o in outs]

    return complete


@register_judge_type("llm", LLMSection)
def _build(cfg: LLMSection, *, where: str = "judge", base_dir=None) -> LLMJudge:
    source = cfg.model
    if base_dir is not None and source.startswith((".", "..")):
        from pathlib import Path

        source = str((Path(base_dir) / source).resolve())
    try:
        model_cfg = ModelSection(name=source, dtype=cfg.dtype)
    except Exception as err:  # noqa: BLE001 - a pydantic error on the one field we set
        raise PrefoptError(f"model = {cfg.model!r}: {err}", where=f"{where}.model") from None
    try:
        model, tok = load_model(model_cfg, seed=cfg.seed, for_training=False)
    except PrefoptError as err:
        text = str(err).removeprefix(f"{err.where}: ") if err.where else str(err)
        raise PrefoptError(text, where=f"{where}.model") from None
    chat = bool(getattr(tok, "chat_template", None)) if cfg.chat == "auto" else bool(cfg.chat)
    complete = engine_completer(model, tok, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    return LLMJudge(
        complete,
        name=cfg.name or f"llm:{cfg.model}",
        template=cfg.template,
        labels=cfg.labels,
        tie_label=cfg.tie_label,
        pattern=cfg.pattern,
        chat=chat,
        where=where,
    )
