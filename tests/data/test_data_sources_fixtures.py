"""Every source on fixtures written in its published schema, with the quirks of datasets.md."""

from __future__ import annotations

import json

import pytest
from data_helpers import FIXTURES, examples, read
from datasets import Dataset

from prefopt.core.errors import PrefoptError
from prefopt.data.schema import PAIRED, UNPAIRED, data_format, data_kind


def _reply(ds, i, col="chosen"):
    return ds[i][col][0]["content"]


def _check_canonical(ds, kind="paired", fmt="conversational"):
    assert data_kind(ds) == kind and data_format(ds) == fmt
    assert tuple(ds.column_names) == (PAIRED if kind == "paired" else UNPAIRED)
    if fmt == "conversational":
        for row in ds:
            assert all(list(m) == ["role", "content"] for m in row["prompt"])
            assert row["prompt"][-1]["role"] != "assistant" or kind == "unpaired"
            for col in ("chosen", "rejected") if kind == "paired" else ("completion",):
                assert row[col] and all(m["role"] == "assistant" for m in row[col])


def test_ultrafeedback_h4_quirks():
    ds, rep = read("ultrafeedback_h4", FIXTURES / "ultrafeedback_h4.jsonl")
    _check_canonical(ds)
    assert (rep.rows_in, rep.rows_out) == (9, 2)
    assert examples(rep, "score_tie") == [1]
    assert examples(rep, "na_placeholder") == [2]  # the build's placeholder for < 2 completions
    assert examples(rep, "identical_chosen_rejected") == [3]
    assert examples(rep, "empty_reply") == [4]
    assert examples(rep, "malformed_row") == [6, 7]  # chosen is a string; rejected missing
    assert examples(rep, "non_assistant_reply") == [8]  # chosen and rejected answer different prompts
    assert ds[0]["prompt"] == [{"role": "user", "content": "how can i develop a habit of drawing daily"}]
    assert ds[0]["score_chosen"] == 8.5 and ds[0]["score_rejected"] == 6.0
    kept, rep = read("ultrafeedback_h4", FIXTURES / "ultrafeedback_h4.jsonl", keep_ties=True)
    assert len(kept) == 3 and "score_tie" not in rep.counts


def test_ultrafeedback_trl_implicit_prompt():
    ds, rep = read("ultrafeedback_trl", FIXTURES / "ultrafeedback_trl.jsonl")
    _check_canonical(ds)
    assert dict(rep.counts) == {
        "score_tie": 1,
        "identical_chosen_rejected": 1,
        "empty_reply": 1,
        "non_assistant_reply": 1,
    }
    multi = ds[1]
    assert [m["role"] for m in multi["prompt"]] == ["system", "user", "assistant", "user"]
    assert _reply(ds, 1) == "Fine."


def test_ultrafeedback_argilla_hyphenated_columns():
    ds, rep = read("ultrafeedback_argilla", FIXTURES / "ultrafeedback_argilla.jsonl")
    _check_canonical(ds)
    assert dict(rep.counts) == {"score_tie": 1, "identical_chosen_rejected": 1, "truthful_qa_source": 1}
    assert ds[0]["score_chosen"] == 4.75 and ds[0]["score_rejected"] == 2.5  # the 1–5 scale is kept
    assert ds[0]["source"] == "ultrafeedback_argilla/evol_instruct"
    ds, rep = read("ultrafeedback_argilla", FIXTURES / "ultrafeedback_argilla.jsonl", drop_truthful_qa=False)
    assert "truthful_qa_source" not in rep.counts and len(ds) == 3
    old, rep = read("ultrafeedback_argilla", FIXTURES / "ultrafeedback_argilla_v1.jsonl")
    assert len(old) == 1 and dict(rep.counts) == {"score_tie": 1}
    assert _reply(old, 0) == "2 and 3." and old[0]["score_chosen"] == 5.0


RAW = FIXTURES / "ultrafeedback_raw.jsonl"


def test_ultrafeedback_raw_best_vs_random_is_seeded():
    ds, rep = read("ultrafeedback_raw", RAW)
    _check_canonical(ds)
    assert dict(rep.counts) == {"truthful_qa_source": 1, "too_few_completions": 1, "score_tie": 1}
    assert dict(rep.flags) == {"completion_empty_response": 1, "completion_without_score": 1}
    assert [_reply(ds, i) for i in range(len(ds))] == [
        "Plants turn light, water and CO2 into sugar and oxygen.",
        "Joyful.",
        "Fish have no legs.",
    ]
    again, _ = read("ultrafeedback_raw", RAW)
    assert again.to_list() == ds.to_list()
    draws = {
        tuple(_reply(read("ultrafeedback_raw", RAW, seed=s)[0], 0, "rejected") for _ in [0]) for s in range(8)
    }
    assert len(draws) > 1  # the rejected side really is drawn at random


def test_ultrafeedback_raw_policies():
    worst, rep = read("ultrafeedback_raw", RAW, binarize="best_vs_worst")
    assert _reply(worst, 0, "rejected") == "It is when animals breathe." and worst[0]["score_rejected"] == 3.5
    assert rep.counts["score_tie"] == 1  # every completion of row 3 scored 7
    lower, rep = read("ultrafeedback_raw", RAW, binarize="best_vs_random_lower")
    assert all(r["score_rejected"] < r["score_chosen"] for r in lower)
    pairs, rep = read("ultrafeedback_raw", RAW, binarize="all_pairs", score="mean_rating")
    assert len(pairs) == 8 and rep.counts["no_pair_above_margin"] == 1
    # mean aspect rating with "N/A" skipped: gpt-4's truthfulness is N/A, the other three are 5
    assert pairs[0]["score_chosen"] == 5.0
    wide, _ = read("ultrafeedback_raw", RAW, binarize="all_pairs", pair_margin=4.0)
    assert all(r["score_chosen"] - r["score_rejected"] > 4.0 for r in wide) and len(wide) == 3
    kept_tqa, _ = read("ultrafeedback_raw", RAW, drop_truthful_qa=False)
    assert any(r["source"] == "ultrafeedback_raw/truthful_qa" for r in kept_tqa)


def test_ultrafeedback_raw_unpaired_by_threshold():
    ds, rep = read("ultrafeedback_raw", RAW, binarize="unpaired", threshold=7.0)
    _check_canonical(ds, "unpaired")
    assert len(ds) == 12 and sum(ds["label"]) == 8
    assert all(r["label"] == (r["score"] >= 7.0) for r in ds)
    with pytest.raises(PrefoptError, match="threshold"):
        read("ultrafeedback_raw", RAW, binarize="unpaired")


def test_ultrafeedback_raw_aspect_names():
    with pytest.raises(PrefoptError, match="instruction_following"):
        read("ultrafeedback_raw", RAW, score="mean_rating", aspects=["instruction-following"])
    ds, _ = read(
        "ultrafeedback_raw", RAW, score="mean_rating", aspects=["helpfulness"], binarize="best_vs_worst"
    )
    assert ds[0]["score_chosen"] == 5.0 and ds[0]["score_rejected"] == 1.0


def test_kto_mix_multi_turn_and_labels():
    ds, rep = read("kto_mix", FIXTURES / "kto_mix.jsonl")
    _check_canonical(ds, "unpaired")
    assert dict(rep.counts) == {
        "non_assistant_reply": 1,
        "malformed_row": 1,
        "empty_reply": 1,
        "na_placeholder": 1,
    }
    assert rep.flags["completion_repeats_prompt"] == 1
    assert ds["label"] == [True, False, True, False, True]
    assert len(ds[0]["prompt"]) == 3 and ds[0]["prompt_id"] == ds[1]["prompt_id"]
    assert ds[4]["completion"] == [
        {"role": "assistant", "content": "Apple."}
    ]  # the repeated prompt is removed


def test_hh_rlhf_fixture_quirks():
    ds, rep = read("hh_rlhf", FIXTURES / "hh_rlhf.jsonl")
    _check_canonical(ds)
    assert examples(rep, "empty_reply") == [2, 9]  # ends in "\n\nAssistant: " (and without the space)
    assert examples(rep, "malformed_row") == [6, 8]  # no leading Human turn; prompt ends with Assistant
    assert examples(rep, "identical_chosen_rejected") == [7]
    assert rep.flags["inner_tag_in_reply"] == 1
    # the replies share their first word ("The sky"/"The sea"): the prompt must not swallow it
    assert ds[0]["prompt"] == [{"role": "user", "content": "What colour is the sky?"}]
    assert (
        _reply(ds, 0) == "The sky is blue on a clear day."
        and _reply(ds, 0, "rejected") == "The sea is green."
    )
    # chosen is a prefix of rejected: still split at the turn
    assert _reply(ds, 2) == "One, two" and _reply(ds, 2, "rejected") == "One, two, three."
    # "Human:" without the exact "\n\nHuman: " tag is text, not a turn
    assert _reply(ds, 4) == "I can't see outside.  Human: ok then"
    dropped, rep = read("hh_rlhf", FIXTURES / "hh_rlhf.jsonl", inner_tags="drop")
    assert rep.counts["inner_tag_in_reply"] == 1 and len(dropped) == len(ds) - 1


def test_hh_rlhf_text_format_keeps_trl_standard_form():
    ds, _ = read("hh_rlhf", FIXTURES / "hh_rlhf.jsonl", format="text")
    _check_canonical(ds, fmt="text")
    assert ds[0]["prompt"] == "\n\nHuman: What colour is the sky?\n\nAssistant:"
    assert ds[0]["chosen"] == " The sky is blue on a clear day."
    raw = [json.loads(line) for line in (FIXTURES / "hh_rlhf.jsonl").read_text().splitlines()]
    assert ds[0]["prompt"] + ds[0]["chosen"] == raw[0]["chosen"]


def test_sharegpt_ranking_roles():
    ds, rep = read("sharegpt_ranking", FIXTURES / "sharegpt_ranking.json")
    _check_canonical(ds)
    assert dict(rep.counts) == {"malformed_row": 1, "non_assistant_reply": 1, "empty_reply": 1}
    assert [m["role"] for m in ds[0]["prompt"]] == ["system", "user"]
    assert ds[3]["prompt"][0] == {"role": "system", "content": "Answer in French."}  # top-level system column
    mapped, rep = read("sharegpt_ranking", FIXTURES / "sharegpt_ranking.json", roles={"bot": "assistant"})
    assert "malformed_row" not in rep.counts and len(mapped) == 5
    with pytest.raises(PrefoptError, match="not a role"):
        read("sharegpt_ranking", FIXTURES / "sharegpt_ranking.json", roles={"bot": "robot"})


def test_stack_exchange():
    ds, rep = read("stack_exchange", FIXTURES / "stack_exchange.json")
    _check_canonical(ds)
    assert dict(rep.counts) == {"identical_chosen_rejected": 1, "empty_reply": 1}
    text, _ = read("stack_exchange", FIXTURES / "stack_exchange.json", format="text")
    assert text[0]["prompt"] == "Question: How do I reverse a list in Python?\n\nAnswer: "
    assert text[0]["chosen"] == "Use `lst[::-1]` or `lst.reverse()`."


def test_messages_label():
    ds, rep = read("messages_label", FIXTURES / "messages_label.json")
    _check_canonical(ds, "unpaired")
    assert examples(rep, "malformed_row") == [3]  # ends with a user turn
    assert ds[2]["prompt"][-1] == {"role": "user", "content": "Bye"}
    assert ds[3]["prompt"] == [{"role": "user", "content": "Two plus two?"}]  # from/value messages
    tagged, _ = read(
        "messages_label",
        FIXTURES / "messages_label_kto_tag.jsonl",
        columns={"messages": "conversations", "label": "kto_tag"},
    )
    assert tagged["label"] == [True, False]
    with pytest.raises(PrefoptError, match="unknown field"):
        read("messages_label", FIXTURES / "messages_label.json", columns={"conversation": "messages"})


def test_generic_text_with_column_mapping():
    cols = {
        "prompt": "question",
        "chosen": "good",
        "rejected": "bad",
        "score_chosen": "s_good",
        "score_rejected": "s_bad",
    }
    ds, rep = read("jsonl", FIXTURES / "generic_text.jsonl", columns=cols)
    _check_canonical(ds, fmt="text")
    assert examples(rep, "malformed_row") == [2, 5]  # a broken JSON line and a non-object line
    assert rep.examples["malformed_row"][0]["detail"].startswith("line 3: invalid JSON")
    assert dict(rep.counts) == {"malformed_row": 2, "identical_chosen_rejected": 1, "score_tie": 1}
    assert ds["score_chosen"] == [1.0, None]  # "N/A" score → missing
    with pytest.raises(PrefoptError, match='no column "answer"'):
        read("jsonl", FIXTURES / "generic_text.jsonl", columns={**cols, "chosen": "answer"})
    with pytest.raises(PrefoptError, match="text data needs a prompt"):
        read("jsonl", FIXTURES / "generic_text.jsonl", columns={"chosen": "good", "rejected": "bad"})
    with pytest.raises(PrefoptError, match="not the canonical ones"):
        read("jsonl", FIXTURES / "generic_text.jsonl")


def test_generic_unpaired_mixed_values_become_one_format():
    ds, rep = read(
        "jsonl",
        FIXTURES / "generic_unpaired.jsonl",
        columns={"prompt": "input", "completion": "output", "label": "ok"},
    )
    _check_canonical(ds, "unpaired")
    assert ds[1]["prompt"] == [
        {"role": "user", "content": "Tell me a fact."}
    ]  # a string row inside message data
    assert ds["label"] == [True, False, True]


def test_generic_json_array_parquet_directory_and_canonical_roundtrip(tmp_path):
    rows = [
        {"q": "What is 1+1?", "a": "2", "b": "3"},
        {"q": "What is 2+2?", "a": "4", "b": "5"},
    ]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    cols = {"prompt": "q", "chosen": "a", "rejected": "b"}
    outs = [
        read(name, tmp_path / f, columns=cols)[0].remove_columns("source").to_list()
        for name, f in (("json", "rows.json"), ("parquet", "rows.parquet"), ("jsonl", "saved"))
    ]
    assert outs[0] == outs[1] == outs[2] and len(outs[0]) == 2
    # canonical output reads back as-is without a mapping
    ds, _ = read("ultrafeedback_h4", FIXTURES / "ultrafeedback_h4.jsonl")
    ds.to_json(str(tmp_path / "canonical.jsonl"))
    back, rep = read("jsonl", tmp_path / "canonical.jsonl")
    assert back.to_list() == ds.to_list() and rep.dropped == 0


def test_max_rows_and_path_errors(tmp_path):
    ds, rep = read("kto_mix", FIXTURES / "kto_mix.jsonl", max_rows=3)
    assert len(ds) == 3 and "max_rows=3" in rep.steps[0]["detail"]
    with pytest.raises(PrefoptError, match="does not exist"):
        read("kto_mix", tmp_path / "missing.jsonl")
    with pytest.raises(PrefoptError, match="has no splits"):
        read("kto_mix", FIXTURES / "kto_mix.jsonl", split="test")
    (tmp_path / "one.json").write_text(json.dumps({"data": [{"prompt": "p"}]}, indent=2))
    with pytest.raises(PrefoptError, match="single JSON object"):
        read("jsonl", tmp_path / "one.json")
    (tmp_path / "x.xml").write_text("<a>b</a>\n")  # .csv is read since issue 19
    with pytest.raises(PrefoptError, match="unsupported file type"):
        read("jsonl", tmp_path / "x.xml")
