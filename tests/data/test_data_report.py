"""The drop report: counts, steps, examples, strict mode, persistence."""

from __future__ import annotations

import json

import pytest

from prefopt.core.errors import PrefoptError
from prefopt.data.report import MAX_EXAMPLES, DropReport


def test_steps_counts_and_examples():
    r = DropReport()
    for i in range(15):
        r.drop("score_tie", i, "both scored 8")
    r.drop("empty_reply", 20)
    r.flag("inner_tag_in_reply", 3)
    r.step("read x", 100, 84)
    assert (r.rows_in, r.rows_out, r.dropped) == (100, 84, 16)
    assert len(r.examples["score_tie"]) == MAX_EXAMPLES  # the count stays complete
    assert r.counts["score_tie"] == 15
    assert r.examples["empty_reply"][0] == {"index": 20, "step": "read x"}
    r.drop("duplicate", 5)
    r.step("dedupe", 84, 83)
    d = r.as_dict()
    assert [s["dropped"] for s in d["steps"]] == [{"score_tie": 15, "empty_reply": 1}, {"duplicate": 1}]
    assert d["flags"] == {"inner_tag_in_reply": 1}
    text = r.summary()
    assert "score_tie" in text and "dedupe" in text and "kept but flagged" in text


def test_drops_after_the_last_step_reduce_rows_out():
    """Tokenisation drops rows without recording a step of its own."""
    r = DropReport()
    r.step("read", 10, 10)
    r.drop("prompt_fills_max_length", 4)
    r.note_truncation({"completions_truncated_right": 3})
    r.note_truncation({"completions_truncated_right": 2})
    assert r.rows_out == 9
    d = r.as_dict()
    assert d["steps"][-1]["step"] == "after last step" and d["steps"][-1]["dropped"] == {
        "prompt_fills_max_length": 1
    }
    assert d["truncation"] == {"completions_truncated_right": 5}
    assert "truncation" in r.summary()


def test_merge_adds_up():
    a, b = DropReport("a"), DropReport("b")
    a.drop("empty_reply", 1)
    a.step("read a", 5, 4)
    b.drop("score_tie", 2)
    b.step("read b", 3, 2)
    b.drop("prompt_fills_max_length", 0)
    a.merge(b)
    assert (a.rows_in, a.rows_out, a.dropped) == (8, 5, 3)
    assert [s["step"] for s in a.as_dict()["steps"]] == ["read a", "read b", "b (after last step)"]


def test_check_strict_lists_reasons_and_rows(tmp_path):
    clean = DropReport()
    clean.step("read", 3, 3)
    clean.check_strict("recipe.yaml")  # nothing dropped: no error
    r = DropReport()
    r.drop("identical_chosen_rejected", 7, "chosen == rejected")
    r.drop("malformed_row", 9, "missing field 'chosen'")
    r.step("read hh_rlhf", 10, 8)
    with pytest.raises(PrefoptError) as e:
        r.check_strict("recipe.yaml")
    msg = str(e.value)
    assert msg.startswith("recipe.yaml:") and "2 of 10 rows" in msg
    assert "identical_chosen_rejected: 1" in msg and "row 7 of read hh_rlhf" in msg and "missing field" in msg
    assert "strict: false" in msg
    path = r.save(tmp_path / "run" / "drop_report.json")
    saved = json.loads(path.read_text())
    assert saved["drops"] == {"identical_chosen_rejected": 1, "malformed_row": 1}
    assert saved["rows_in"] == 10 and saved["rows_out"] == 8
