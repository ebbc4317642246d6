"""Canonical schema, format/kind detection, prompt ids and row-level parsing helpers."""

from __future__ import annotations

import hashlib
import json

import pytest
from datasets import Dataset

from prefopt.core.errors import PrefoptError
from prefopt.data.messages import (
    RowProblem,
    as_label,
    as_score,
    normalize_messages,
    split_implicit_prompt,
    split_last_reply,
)
from prefopt.data.schema import (
    PAIRED,
    UNPAIRED,
    build_dataset,
    compute_prompt_id,
    data_format,
    data_kind,
    features,
)

U = {"role": "user", "content": "hi"}
A1 = {"role": "assistant", "content": "hello"}
A2 = {"role": "assistant", "content": "go away"}


def test_build_dataset_has_exact_canonical_features():
    conv = build_dataset(
        [{"prompt": [{"content": "hi", "role": "user"}], "chosen": [A1], "rejected": [A2]}],
        "paired",
        "conversational",
    )
    assert tuple(conv.column_names) == PAIRED
    assert conv.features == features("paired", "conversational")
    # messages are stored role-then-content, whatever the input key order was
    assert [f.name for f in conv.data.schema.field("prompt").type.value_type] == ["role", "content"]
    assert conv[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert conv[0]["prompt_id"] == compute_prompt_id([U])
    assert conv[0]["score_chosen"] is None and conv[0]["source"] == "custom"
    text = build_dataset(
        [{"prompt": "37+48=", "completion": "85", "label": 1, "score": 1}], "unpaired", "text"
    )
    assert tuple(text.column_names) == UNPAIRED
    assert text[0]["label"] is True and text[0]["score"] == 1.0


def test_kind_and_format_are_decided_from_features():
    paired = build_dataset([{"prompt": [U], "chosen": [A1], "rejected": [A2]}], "paired", "conversational")
    unpaired = build_dataset([{"prompt": "2+2=", "completion": "4", "label": True}], "unpaired", "text")
    assert (data_kind(paired), data_format(paired)) == ("paired", "conversational")
    assert (data_kind(unpaired), data_format(unpaired)) == ("unpaired", "text")
    # an empty dataset still has a format: it comes from the features, not from a row
    empty = paired.select([])
    assert data_format(empty) == "conversational"


def test_mixed_string_prompt_and_message_replies_is_rejected():
    """The UltraFeedback H4 shape: TRL's per-row guess flips on it, prefopt refuses it."""
    mixed = Dataset.from_list([{"prompt": "hi", "chosen": [U, A1], "rejected": [U, A2]}])
    with pytest.raises(PrefoptError, match="mixes text and conversational"):
        data_format(mixed)
    with pytest.raises(PrefoptError, match="neither paired"):
        data_kind(Dataset.from_list([{"text": "x"}]))


def test_prompt_id_is_sha256_of_compact_json_and_key_order_free():
    a = compute_prompt_id([{"role": "user", "content": "hé"}])
    b = compute_prompt_id([{"content": "hé", "role": "user", "extra": 1}])
    assert a == b
    blob = json.dumps([{"role": "user", "content": "hé"}], ensure_ascii=False, separators=(",", ":"))
    assert a == hashlib.sha256(blob.encode()).hexdigest()
    assert compute_prompt_id("hé") == hashlib.sha256(b'"h\xc3\xa9"').hexdigest()
    assert compute_prompt_id("hi") != compute_prompt_id([U])


def test_normalize_messages_accepts_sharegpt_and_typed_parts():
    msgs = normalize_messages(
        [
            {"from": "system", "value": "s"},
            {"from": "human", "value": "q"},
            {
                "role": "assistant",
                "content": [{"type": "text", "value": "a"}, {"type": "text", "text": "b"}],
                "loss_weight": 1.0,
            },
            {"from": "observation", "value": "tool out"},
        ],
        "conversations",
    )
    assert msgs == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "ab"},
        {"role": "tool", "content": "tool out"},
    ]
    assert normalize_messages({"from": "gpt", "value": "x"}, "chosen") == [
        {"role": "assistant", "content": "x"}
    ]
    assert (
        normalize_messages([{"from": "bot", "value": "x"}], "c", {"bot": "assistant"})[0]["role"]
        == "assistant"
    )
    for bad in (
        [{"from": "bot", "value": "x"}],
        [{"role": "user"}],
        "text",
        [{"role": "user", "content": [{"type": "image"}]}],
    ):
        with pytest.raises(RowProblem) as e:
            normalize_messages(bad, "m")
        assert e.value.reason == "malformed_row"


def test_split_implicit_prompt():
    sys_ = {"role": "system", "content": "s"}
    assert split_implicit_prompt([U, A1], [U, A2]) == ([U], [A1], [A2])
    # multi-turn: the shared history is the prompt
    assert split_implicit_prompt([sys_, U, A1, U, A1], [sys_, U, A1, U, A2]) == ([sys_, U, A1, U], [A1], [A2])
    # identical conversations give identical replies (the caller counts them), never a shifted split
    assert split_implicit_prompt([U, A1], [U, A1]) == ([U], [A1], [A1])
    # a prefix: the shorter side has an empty reply
    assert split_implicit_prompt([U], [U, A2]) == ([U], [], [A2])
    # shared first assistant turn of a two-message reply is snapped back into the replies
    assert split_implicit_prompt([U, A1, A1], [U, A1, A2]) == ([U], [A1, A1], [A1, A2])
    with pytest.raises(RowProblem) as e:
        split_implicit_prompt([U, A1, U, A1], [U, A2, U, A2])
    assert e.value.reason == "non_assistant_reply"
    assert split_last_reply([U, A1, U, A2], "m") == ([U, A1, U], [A2])
    with pytest.raises(RowProblem):
        split_last_reply([U, A1, U], "m")


def test_scores_and_labels():
    assert as_score("7") == 7.0 and as_score(8.5) == 8.5 and as_score(3) == 3.0
    assert as_score("N/A") is None and as_score(None) is None and as_score(float("nan")) is None
    for bad in ("abc", True, [1]):
        with pytest.raises(RowProblem):
            as_score(bad)
    assert as_label(True) and as_label(1) and as_label("TRUE") and not as_label("false") and not as_label(0)
    for bad in ("maybe", 2, None):
        with pytest.raises(RowProblem):
            as_label(bad)
