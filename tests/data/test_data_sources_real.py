"""Sources on the real public samples in ../shared/data (skipped when that folder is absent)."""

from __future__ import annotations

import json

import pytest
from data_helpers import SHARED_DATA, examples, read

from prefopt.data.schema import data_format, data_kind

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real samples not found at {SHARED_DATA}")

HH = SHARED_DATA / "anthropics_hh-rlhf__harmless-base__test.jsonl"
DPO_DEMO = SHARED_DATA / "hiyouga_LLaMA-Factory__dpo_en_demo.json"
KTO_DEMO = SHARED_DATA / "hiyouga_LLaMA-Factory__kto_en_demo.json"
V1_DEMO = SHARED_DATA / "hiyouga_LLaMA-Factory__v1_dpo_demo.jsonl"
STACK = SHARED_DATA / "pytorch_torchtune__stack_exchange_paired_tiny.json"


def test_hh_rlhf_real_sample():
    ds, rep = read("hh_rlhf", HH)
    assert (rep.rows_in, rep.rows_out) == (108, 104)
    # sample rows 86 and 100–102 (original lines 86, 516, 925, 1103) end with an empty chosen reply
    assert dict(rep.counts) == {"empty_reply": 4}
    assert examples(rep, "empty_reply") == [86, 100, 101, 102]
    # rows 103–107 carry an inner "\n\nAssistant:"/"\n\nHuman:" in a reply: kept, flagged
    assert rep.flags["inner_tag_in_reply"] == 5
    assert {e["index"] for e in rep.flag_examples["inner_tag_in_reply"]} == {103, 104, 105, 106, 107}
    for row in ds:
        roles = [m["role"] for m in row["prompt"]]
        assert roles[0] == "user" and roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert row["chosen"][0]["content"] and row["rejected"][0]["content"]


def test_hh_rlhf_real_sample_splits_at_turn_boundaries():
    """Text form: prompt + reply is the transcript byte for byte, and the prompt always ends at
    the final Assistant tag (TRL's character split can end mid-word when replies share a prefix)."""
    raw = [json.loads(line) for line in HH.read_text().splitlines()]
    ds, rep = read("hh_rlhf", HH, format="text")
    kept = [i for i in range(len(raw)) if i not in set(examples(rep, "empty_reply"))]
    assert len(ds) == len(kept)
    for row, i in zip(ds, kept):
        assert row["prompt"].endswith("\n\nAssistant:")
        assert row["prompt"] + row["chosen"] == raw[i]["chosen"]
        assert row["prompt"] + row["rejected"] == raw[i]["rejected"]


def test_sharegpt_ranking_real_sample():
    raw = json.loads(DPO_DEMO.read_text())
    ds, rep = read("sharegpt_ranking", DPO_DEMO)
    assert len(ds) == len(raw) == 150 and rep.dropped == 0
    assert data_kind(ds) == "paired" and data_format(ds) == "conversational"
    with_system = sum(1 for r in raw if r["conversations"][0]["from"] == "system")
    assert sum(1 for r in ds if r["prompt"][0]["role"] == "system") == with_system > 0
    for row, src in zip(ds, raw):
        assert {m["role"] for m in row["prompt"]} <= {"system", "user", "assistant"}
        assert row["prompt"][-1]["role"] == "user"
        assert [m["content"] for m in row["prompt"]] == [m["value"] for m in src["conversations"]]
        assert row["chosen"] == [{"role": "assistant", "content": src["chosen"]["value"]}]


def test_messages_label_real_sample():
    raw = json.loads(KTO_DEMO.read_text())
    ds, rep = read("messages_label", KTO_DEMO)
    assert len(ds) == 300 and rep.dropped == 0
    assert sum(ds["label"]) == 150
    for row, src in zip(ds, raw):
        assert row["prompt"] + row["completion"] == [
            {"role": m["role"], "content": m["content"]} for m in src["messages"]
        ]
    assert len(set(ds["prompt_id"])) == 300 - 3  # three prompts appear twice


def test_stack_exchange_real_sample():
    raw = json.loads(STACK.read_text())
    ds, rep = read("stack_exchange", STACK)
    assert rep.rows_in == 25 and len(ds) + rep.dropped == 25
    dropped = {e["index"] for entries in rep.examples.values() for e in entries}
    kept = [r for i, r in enumerate(raw) if i not in dropped]
    assert len(set(r["question"] for r in raw)) < len(raw)  # questions repeat with other answer pairs
    for row, src in zip(ds, kept):
        assert row["prompt"] == [{"role": "user", "content": src["question"]}]
        assert row["chosen"][0]["content"] == src["response_j"]
        assert row["rejected"][0]["content"] == src["response_k"]


def test_llamafactory_v1_typed_content_via_generic_mapping():
    ds, rep = read("jsonl", V1_DEMO, columns={"chosen": "chosen_messages", "rejected": "rejected_messages"})
    assert len(ds) == 10 and rep.dropped == 0
    for row in ds:
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert row["chosen"] != row["rejected"] and row["chosen"][0]["role"] == "assistant"
