"""lvwerra/stack-exchange-paired (and torchtune's tiny slice of it).

Row: ``question``, ``response_j`` (the preferred answer), ``response_k`` (the other), plus
``qid``/``date``/``metadata`` on the hub. Conversational by default (user question, assistant
answers); ``format: text`` emits TRL's stack-llama form, prompt ``"Question: <q>\\n\\nAnswer: "``.
The hub set is large and split into folders: pass ``data_dir`` (e.g. ``data/rl``).
"""

from __future__ import annotations

from typing import Any

from prefopt.data.messages import require_text
from prefopt.data.registry import register_source
from prefopt.data.report import DropReport
from prefopt.data.sources._base import FORMAT, RowContext, options, read_source

NAME = "stack_exchange"
TEXT_PROMPT = "Question: {question}\n\nAnswer: "


def make_convert(fmt: str):
    def convert(row: dict[str, Any], ctx: RowContext) -> list[dict[str, Any]]:
        question = require_text(row["question"], "question")
        good = require_text(row["response_j"], "response_j")
        bad = require_text(row["response_k"], "response_k")
        if fmt == "text":
            return [{"prompt": TEXT_PROMPT.format(question=question), "chosen": good, "rejected": bad}]
        return [
            {
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": bad}],
            }
        ]

    return convert


@register_source(NAME, options=options(format=FORMAT), kinds=("paired",))
def read(spec: dict[str, Any], *, base_dir=None, seed: int = 0, report: DropReport):
    """stack-exchange-paired: question / response_j (preferred) / response_k."""
    fmt = spec["format"]
    return read_source(
        spec, make_convert(fmt), name=NAME, kind="paired", fmt=fmt, base_dir=base_dir, report=report
    )


def detect(sample):
    """Claim files with question / response_j / response_k string columns (see the registry)."""
    if sample.has("question", "response_j", "response_k") and all(
        sample.strings(c) for c in ("question", "response_j", "response_k")
    ):
        return 98, "question, response_j, response_k columns (lvwerra/stack-exchange-paired)"
    return None
