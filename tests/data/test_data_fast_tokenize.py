"""The batched/parallel tokeniser gives exactly the reference `tokenize_dataset` output."""

from __future__ import annotations

import random

import pytest

from prefopt.core.errors import PrefoptError
from prefopt.data.fast_tokenize import ByteTable, Encoder, token_lengths, tokenize_dataset_fast
from prefopt.data.report import DropReport
from prefopt.data.schema import build_dataset
from prefopt.data.tokenization import tokenize_dataset

CHARS = "abc xyz déjà 中文 🙂\n<|eos|><|user|>"


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(CHARS) for _ in range(n)).strip() or "x"


def _dataset(kind: str, fmt: str, n: int = 80, seed: int = 0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if fmt == "conversational":
            prompt = [{"role": "user", "content": _text(rng, rng.randint(1, 120))}]
            if i % 5 == 0:
                prompt = [{"role": "system", "content": "be brief"}, *prompt]
            if i % 7 == 0:  # a prefilled assistant turn: rendered with continue_final_message
                prompt = [*prompt, {"role": "assistant", "content": "Sure,"}]
            reply = lambda: [{"role": "assistant", "content": _text(rng, rng.randint(1, 150))}]  # noqa: E731
        else:
            prompt = f"{rng.randint(0, 99)}+{rng.randint(0, 99)}=" + _text(rng, rng.randint(0, 60))
            reply = lambda: _text(rng, rng.randint(1, 80))  # noqa: E731
        if kind == "paired":
            rows.append({"prompt": prompt, "chosen": reply(), "rejected": reply()})
        else:
            rows.append({"prompt": prompt, "completion": reply(), "label": i % 3 == 0})
    return build_dataset(rows, kind, fmt)


def _same(ds, kind, tok, max_length, max_prompt_length, num_proc=1, batch_size=500):
    r_ref, r_fast = DropReport(), DropReport()
    ref, s_ref = tokenize_dataset(ds, kind, tok, max_length, max_prompt_length, r_ref)
    fast, s_fast = tokenize_dataset_fast(
        ds, kind, tok, max_length, max_prompt_length, r_fast, num_proc=num_proc, batch_size=batch_size
    )
    assert fast.column_names == ref.column_names
    assert fast.to_list() == ref.to_list()
    assert s_fast.as_dict() == s_ref.as_dict()
    assert r_fast.as_dict() == r_ref.as_dict()
    return s_ref


@pytest.mark.parametrize("kind", ["paired", "unpaired"])
@pytest.mark.parametrize("fmt", ["conversational", "text"])
def test_identical_to_reference(tokenizer, kind, fmt):
    ds = _dataset(kind, fmt)
    for max_length, max_prompt_length in ((None, None), (96, None), (128, 24), (40, None)):
        _same(ds, kind, tokenizer, max_length, max_prompt_length)
    stats = _same(ds, kind, tokenizer, 40, None)
    if fmt == "conversational":
        assert stats.dropped_prompt_too_long > 0 and stats.completions_truncated > 0


def test_identical_in_parallel_and_after_shuffle(tokenizer):
    ds = _dataset("paired", "conversational", n=240, seed=1).shuffle(seed=0)
    _same(ds, "paired", tokenizer, 100, 48, num_proc=2, batch_size=32)  # several forked workers


def test_byte_table_matches_the_tokenizer(tokenizer):
    table = ByteTable.build(tokenizer)
    assert table is not None  # the builtin tokenizer is byte-level with no merges
    for text in ("", "<|eos|>", "<|eo", "a<|user|><|user|>b", "".join(map(chr, range(1, 300))), "🙂" * 5):
        assert table.encode(text).tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_other_tokenizers_use_the_tokenizer_itself():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz <>|/")}
    vocab.update({"ab": len(vocab), "abc": len(vocab) + 1})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("ab", "c")], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    assert Encoder(tok).table is None
    rows = [
        {
            "prompt": [{"role": "user", "content": "abc cab"}],
            "chosen": [{"role": "assistant", "content": "abcabc"}],
            "rejected": [{"role": "assistant", "content": "bca"}],
        }
    ] * 3
    _same(build_dataset(rows, "paired", "conversational"), "paired", tok, 30, None)


def test_all_rows_dropped_and_token_lengths(tokenizer):
    ds = _dataset("paired", "text", n=10)
    with pytest.raises(PrefoptError, match="every example was removed"):
        tokenize_dataset_fast(ds, "paired", tokenizer, max_length=1)
    lengths = token_lengths(ds, "paired", tokenizer)
    ref, _ = tokenize_dataset(ds, "paired", tokenizer)
    assert lengths["prompt"].tolist() == [len(x) for x in ref["prompt_ids"]]
    assert lengths["rejected"].tolist() == [len(x) for x in ref["rejected_ids"]]


def test_mixed_columns_follow_the_reference_rules(tokenizer):
    from datasets import Dataset

    msgs = [{"role": "user", "content": "hi"}]
    mixed = Dataset.from_list([{"prompt": msgs, "chosen": "hello", "rejected": "go away"}] * 3)
    _same(mixed, "paired", tokenizer, None, None)  # messages prompt, text replies: text + EOS
    bad = Dataset.from_list(
        [{"prompt": "hi", "completion": [{"role": "assistant", "content": "x"}], "label": True}]
    )
    with pytest.raises(PrefoptError, match="needs a conversational prompt"):
        tokenize_dataset(bad, "unpaired", tokenizer)
    with pytest.raises(PrefoptError, match="needs a conversational prompt"):
        tokenize_dataset_fast(bad, "unpaired", tokenizer)
