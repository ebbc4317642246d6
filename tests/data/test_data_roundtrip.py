"""Property: convert → unpair → re-pair gives back the converted pairs (content, scores, prompt ids)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from data_helpers import read
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefopt.data.report import DropReport
from prefopt.data.transforms import pair, unpair

TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
).filter(lambda s: s.strip() and s.strip() != "N/A")


@st.composite
def pair_rows(draw):
    """Rows in a user's own JSONL schema; prompts repeat so groups hold several pairs."""
    prompts = draw(st.lists(TEXT, min_size=1, max_size=4, unique=True))
    n = draw(st.integers(min_value=1, max_value=12))
    rows = []
    for i in range(n):
        chosen = draw(TEXT) + f"#{i}c"  # distinct replies: no identical pairs, no duplicates
        rejected = draw(TEXT) + f"#{i}r"
        scores = draw(st.one_of(st.none(), st.tuples(st.integers(5, 10), st.integers(0, 4))))
        row = {"q": draw(st.sampled_from(prompts)), "good": chosen, "bad": rejected}
        if scores is not None:
            row["sg"], row["sb"] = float(scores[0]), float(scores[1])
        rows.append(row)
    return rows


def _key(row):
    return json.dumps(
        [
            row["prompt"],
            row["chosen"],
            row["rejected"],
            row["prompt_id"],
            row["score_chosen"],
            row["score_rejected"],
            row["source"],
        ],
        sort_keys=True,
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=pair_rows(), conversational=st.booleans())
def test_unpair_then_pair_roundtrips(rows, conversational):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mine.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        cols = {"prompt": "q", "chosen": "good", "rejected": "bad"}
        if any("sg" in r for r in rows):
            cols.update(score_chosen="sg", score_rejected="sb")
        ds, rep = read("jsonl", path, columns=cols, format="conversational" if conversational else "text")
    assert rep.dropped == 0 and len(ds) == len(rows)
    # the conversion kept the content
    for row, src in zip(ds, rows):
        if conversational:
            assert row["prompt"] == [{"role": "user", "content": src["q"]}]
            assert row["chosen"] == [{"role": "assistant", "content": src["good"]}]
        else:
            assert (row["prompt"], row["chosen"], row["rejected"]) == (src["q"], src["good"], src["bad"])
        assert row["score_chosen"] == src.get("sg")
    report = DropReport()
    unpaired = unpair(ds, report)
    assert len(unpaired) == 2 * len(ds) and sum(unpaired["label"]) == len(ds)
    back = pair(unpaired, report, mode="one_to_one", seed=0)
    assert report.dropped == 0
    assert sorted(map(_key, back)) == sorted(map(_key, ds))
