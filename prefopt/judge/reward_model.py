"""The ``reward_model`` judge: an ``AutoModelForSequenceClassification`` checkpoint with one logit.

``path`` is a local directory (relative paths against the config's folder) — a checkpoint, or the run
directory of ``prefopt train`` with ``algorithm: reward`` (its ``model/``) — or a hub id present in
the local Hugging Face cache; a PEFT adapter directory (task type ``SEQ_CLS``) is loaded on its base.
Before any weights are read the checkpoint's config is checked: an architecture that is not
``…ForSequenceClassification`` (a causal LM, say) or a head with more than one label is refused with
a PrefoptError naming the path, and so is a checkpoint whose head weights are missing (transformers
would initialise them at random and every score would be noise).

A (prompt, reply) is tokenised exactly as prefopt trains on it (:func:`prefopt.data.tokenization.encode_prompt`
+ :func:`~prefopt.data.tokenization.encode_completion`, EOS included), so a reward model prefopt trained
scores what it saw. Batches are length-grouped and right-padded; the score is the head's logit (the
model pools the last non-pad token). With ``max_length`` a long pair keeps the end of its prompt (down
to half of ``max_length``) and then the start of the reply; the count is in ``truncated``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from prefopt.core.errors import PrefoptError
from prefopt.data.tokenization import encode_completion, encode_prompt
from prefopt.judge.base import Judge, JudgeSection, register_judge_type
from prefopt.model.loading import BUILTIN_DIR

HEAD_FIX = (
    "point judge.path at a reward model: a checkpoint saved from AutoModelForSequenceClassification with "
    "num_labels=1 (e.g. one trained by `algorithm: reward`); a causal LM can judge as `type: llm` instead."
)


class RewardModelSection(JudgeSection):
    type: Literal["reward_model"] = "reward_model"
    path: str = Field(..., description="Local checkpoint directory or a hub id in the local HF cache.")
    revision: str | None = None
    batch_size: int = Field(16, gt=0, description="(prompt, reply) sequences per forward.")
    max_length: int | None = Field(None, gt=1, description="Longest sequence scored, in tokens.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    device: str | None = Field(None, description="torch device (default: cuda when available, else cpu).")
    trust_remote_code: bool = False


def resolve_path(path: str, *, where: str, base_dir: str | None = None, revision: str | None = None) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute() and base_dir is not None and (Path(base_dir) / p).exists():
        p = Path(base_dir) / p
    if p.exists():
        if not p.is_dir():
            raise PrefoptError(f"{p} is a file, not a checkpoint directory.", where=where, fix=HEAD_FIX)
        if (p / "model").is_dir() and not (p / "config.json").exists():
            p = p / "model"  # a `prefopt train` run directory (algorithm: reward): its saved model
        return str(p)
    if path.startswith((".", "/", "~")):
        raise PrefoptError(f"reward model path {path} does not exist.", where=where, fix="check the path.")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "config.json", revision=revision), str):
        return path
    raise PrefoptError(
        f'"{path}" is neither a local directory nor a model in the local Hugging Face cache.',
        where=where,
        fix=f"download it first (`huggingface-cli download {path}`) or give a local directory.",
    )


def check_head(
    path: str, *, where: str, revision: str | None = None, trust_remote_code: bool = False
) -> None:
    """Refuse, before loading weights, a checkpoint whose head is not a one-logit classification head."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    archs = list(getattr(cfg, "architectures", None) or [])
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise PrefoptError(
            f"the checkpoint at {path} is a {archs[0]}, not a sequence-classification model, so it has no "
            "trained reward head (loading it as one would score with random weights).",
            where=where,
            fix=HEAD_FIX,
        )
    if int(cfg.num_labels) != 1:
        raise PrefoptError(
            f"the checkpoint at {path} has a {cfg.num_labels}-label classification head; a reward model has "
            "a single logit (num_labels=1).",
            where=where,
            fix=HEAD_FIX,
        )


class RewardModelJudge(Judge):
    type = "reward_model"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str,
        batch_size: int = 16,
        max_length: int | None = None,
        where: str = "judge",
        tie_margin: float = 0.0,
    ):
        super().__init__(name, where=where, tie_margin=tie_margin)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self.truncated = 0
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    def encode(self, prompt, reply) -> list[int]:
        p = encode_prompt(self.tokenizer, prompt)
        c = encode_completion(self.tokenizer, prompt, reply)
        m = self.max_length
        if m is not None and len(p) + len(c) > m:
            self.truncated += 1
            keep_p = max(min(len(p), m // 2), m - len(c))
            p = p[-keep_p:] if keep_p > 0 else []
            c = c[: m - len(p)]
        return p + c

    def _score(self, prompts: list, replies: list) -> list:
        import torch

        seqs = [self.encode(p, r) for p, r in zip(prompts, replies)]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out: list[float] = [0.0] * len(seqs)
        pad = self.model.config.pad_token_id
        try:
            device = next(self.model.parameters()).device
        except StopIteration:  # pragma: no cover
            device = torch.device("cpu")
        with torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                width = max(len(seqs[i]) for i in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for j, i in enumerate(chunk):
                    ids[j, : len(seqs[i])] = torch.tensor(seqs[i], dtype=torch.long)
                    mask[j, : len(seqs[i])] = 1
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                for j, i in enumerate(chunk):
                    out[i] = float(logits[j, 0].float())
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "batch_size": self.batch_size, "max_length": self.max_length}


def load_tokenizer_from(path: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - prefopt's builtin byte-level tokenizer, as prefopt.model.loading.load_trained
        tok = PreTrainedTokenizerFast.from_pretrained(str(BUILTIN_DIR))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_reward_model(cfg: RewardModelSection, *, where: str = "judge", base_dir: str | None = None):
    """``(model, tokenizer)`` for a reward-model checkpoint, with the head checked first."""
    import torch
    from transformers import AutoModelForSequenceClassification

    key = f"{where}.path"
    path = resolve_path(cfg.path, where=key, base_dir=base_dir, revision=cfg.revision)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        cfg.dtype, "auto"
    )
    adapter = Path(path) / "adapter_config.json"
    if adapter.exists():
        spec = json.loads(adapter.read_text())
        if spec.get("task_type") not in ("SEQ_CLS", None):
            raise PrefoptError(
                f"the adapter at {path} is a {spec.get('task_type')} adapter, not a sequence-classification one.",
                where=key,
                fix=HEAD_FIX,
            )
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    else:
        check_head(path, where=key, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            dtype=dtype,
            output_loading_info=True,
        )
        missing = list(info.get("missing_keys") or [])
        if missing:
            raise PrefoptError(
                f"the checkpoint at {path} lacks weights the reward model needs ({', '.join(sorted(missing)[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); transformers would initialise them at random.",
                where=key,
                fix=HEAD_FIX,
            )
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    tok = load_tokenizer_from(path, cfg.revision, cfg.trust_remote_code)
    return model, tok


@register_judge_type("reward_model", RewardModelSection)
def _build(cfg: RewardModelSection, *, where: str = "judge", base_dir=None) -> RewardModelJudge:
    model, tok = load_reward_model(cfg, where=where, base_dir=base_dir)
    return RewardModelJudge(
        model,
        tok,
        name=cfg.name or f"reward_model:{cfg.path}",
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        where=where,
        tie_margin=cfg.tie_margin,
    )
