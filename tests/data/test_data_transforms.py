"""Transforms (unpair, pair, dedupe, margin, split) and the recipe pipeline `prepare`."""

from __future__ import annotations

import pytest
from data_helpers import FIXTURES
from datasets import Dataset

from prefopt.config.recipe import DataSection, SourceSection
from prefopt.core.errors import PrefoptError
from prefopt.data.registry import register_source
from prefopt.data.report import DropReport
from prefopt.data.schema import build_dataset, compute_prompt_id, data_format, data_kind, features
from prefopt.data.transforms import (
    dedupe,
    filter_score_margin,
    pair,
    prepare,
    render_chat_template,
    split_by_prompt,
    unpair,
)


def _pairs(n=4, prompts=None, fmt="text"):
    rows = []
    for i in range(n):
        p = (prompts or [f"q{i}"])[i % len(prompts or [f"q{i}"])] if prompts else f"q{i}"
        if fmt == "text":
            rows.append(
                {
                    "prompt": p,
                    "chosen": f"good{i}",
                    "rejected": f"bad{i}",
                    "score_chosen": 9.0 - i,
                    "score_rejected": 1.0,
                    "source": "s",
                }
            )
        else:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": p}],
                    "chosen": [{"role": "assistant", "content": f"good{i}"}],
                    "rejected": [{"role": "assistant", "content": f"bad{i}"}],
                    "score_chosen": 9.0 - i,
                    "score_rejected": 1.0,
                }
            )
    return build_dataset(rows, "paired", fmt)


def test_unpair_interleaves_and_keeps_metadata():
    ds = _pairs(3, fmt="conversational")
    r = DropReport()
    out = unpair(ds, r)
    assert data_kind(out) == "unpaired" and out.features == features("unpaired", "conversational")
    assert out["label"] == [True, False] * 3
    assert [c[0]["content"] for c in out["completion"]] == ["good0", "bad0", "good1", "bad1", "good2", "bad2"]
    assert out["score"] == [9.0, 1.0, 8.0, 1.0, 7.0, 1.0]
    assert out["prompt_id"][0] == out["prompt_id"][1] == ds["prompt_id"][0]
    assert r.steps[-1] == {
        "step": "unpair",
        "rows_in": 3,
        "rows_out": 6,
        "dropped": {},
        "detail": "each pair -> a desirable and an undesirable row, interleaved",
    }


def test_pair_one_to_one_and_all():
    rows = [
        {"prompt": "a", "completion": "a1", "label": True},
        {"prompt": "a", "completion": "a2", "label": False},
        {"prompt": "a", "completion": "a3", "label": False},
        {"prompt": "b", "completion": "b1", "label": True},
        {"prompt": "c", "completion": "c1", "label": False},
        {"prompt": "d", "completion": "same", "label": True},
        {"prompt": "d", "completion": "same", "label": False},
    ]
    ds = build_dataset(rows, "unpaired", "text")
    r = DropReport()
    one = pair(ds, r, mode="one_to_one", seed=0)
    assert len(one) == 1 and one[0]["chosen"] == "a1" and one[0]["rejected"] in ("a2", "a3")
    assert r.counts["no_counterpart"] == 3  # a's extra undesirable row, b and c
    assert r.counts["identical_chosen_rejected"] == 1  # one completion labelled both ways
    r = DropReport()
    every = pair(ds, r, mode="all")
    assert sorted((x["chosen"], x["rejected"]) for x in every) == [("a1", "a2"), ("a1", "a3")]
    assert r.counts["no_counterpart"] == 2
    with pytest.raises(PrefoptError):
        pair(_pairs(2), DropReport())


def test_dedupe_and_score_margin():
    ds = build_dataset(
        [
            {"prompt": "p", "chosen": "x", "rejected": "y", "score_chosen": 5.0, "score_rejected": 1.0},
            {"prompt": "p", "chosen": "x", "rejected": "y", "score_chosen": 5.0, "score_rejected": 1.0},
            {"prompt": "p", "chosen": "x", "rejected": "z", "score_chosen": 5.0, "score_rejected": 4.5},
            {"prompt": "q", "chosen": "x", "rejected": "z"},
        ],
        "paired",
        "text",
    )
    r = DropReport()
    out = dedupe(ds, r)
    assert len(out) == 3 and r.counts["duplicate"] == 1 and r.examples["duplicate"][0]["index"] == 1
    out = filter_score_margin(out, 1.0, r)
    assert len(out) == 1 and r.counts["below_score_margin"] == 1 and r.counts["missing_score"] == 1
    with pytest.raises(PrefoptError, match="no row has both"):
        filter_score_margin(
            build_dataset([{"prompt": "p", "chosen": "a", "rejected": "b"}], "paired", "text"), 1.0, r
        )
    with pytest.raises(PrefoptError, match="unpaired"):
        filter_score_margin(unpair(ds, DropReport()), 1.0, r)


def test_split_by_prompt_never_leaks_a_prompt():
    ds = _pairs(60, prompts=[f"p{i}" for i in range(20)])  # each prompt three times
    train, ev = split_by_prompt(ds, 0.25, seed=3)
    assert len(train) + len(ev) == 60
    assert not set(train["prompt_id"]) & set(ev["prompt_id"])
    assert len(set(ev["prompt_id"])) == 5
    again, _ = split_by_prompt(ds.shuffle(seed=9), 0.25, seed=3)  # row order does not matter
    assert set(again["prompt_id"]) == set(train["prompt_id"])
    with pytest.raises(PrefoptError, match="only 1 distinct"):
        split_by_prompt(_pairs(3, prompts=["same"]), 0.5, seed=0)


def test_render_chat_template(tokenizer):
    ds = _pairs(2, fmt="conversational")
    out = render_chat_template(ds, tokenizer)
    assert data_format(out) == "text"
    assert (
        out[0]["prompt"] == "<|user|>q0<|eos|><|assistant|>"
        and out[0]["chosen"] == "<|assistant|>good0<|eos|>"[13:]
    )
    assert out[0]["prompt_id"] == compute_prompt_id(out[0]["prompt"])
    import copy

    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(PrefoptError, match="no chat template"):
        render_chat_template(ds, bare)


# ------------------------------------------------------------------------------------------- prepare
def _data(train, **kw):
    return DataSection(train=train, **kw)


def _src(name, path, **opts):
    return SourceSection(source=name, path=str(path), **opts)


def test_prepare_kind_mismatch_says_which_transform_to_add():
    data = _data([_src("ultrafeedback_h4", FIXTURES / "ultrafeedback_h4.jsonl")])
    with pytest.raises(PrefoptError) as e:
        prepare(data.train, None, data, "unpaired", None, 0)
    assert "transform: unpair" in str(e.value) and "data.train[0]" in str(e.value)
    data = _data([_src("kto_mix", FIXTURES / "kto_mix.jsonl")])
    with pytest.raises(PrefoptError, match="transform: pair"):
        prepare(data.train, None, data, "dpo", None, 0)
    data = _data([_src("kto_mix", FIXTURES / "kto_mix.jsonl")], transform="unpair")
    with pytest.raises(PrefoptError, match="use transform: pair"):
        prepare(data.train, None, data, "paired", None, 0)


def test_prepare_unpairs_splits_by_prompt_and_reports():
    data = _data(
        [_src("ultrafeedback_raw", FIXTURES / "ultrafeedback_raw.jsonl", binarize="all_pairs")],
        transform="unpair",
        eval_fraction=0.3,
        min_score_margin=2.0,
    )
    train, ev, report = prepare(data.train, None, data, "kto", FIXTURES, 0)
    assert data_kind(train) == data_kind(ev) == "unpaired"
    assert not set(train["prompt_id"]) & set(ev["prompt_id"])
    steps = [s["step"] for s in report.steps]
    assert (
        steps[0].endswith("read ultrafeedback_raw")
        and steps[1].endswith("dedupe")  # records as given, before the margin filter and unpair
        and "unpair" in steps[3]
        and steps[-1] == "split by prompt"
    )
    assert report.rows_out == len(train) + len(ev)
    assert report.counts["below_score_margin"] > 0 and report.counts["truthful_qa_source"] == 1


def test_prepare_pairs_unpaired_rows_and_strict():
    data = _data([_src("kto_mix", "kto_mix.jsonl")], transform="pair", shuffle=False)
    train, ev, report = prepare(data.train, None, data, "dpo", FIXTURES, 0)  # path relative to base_dir
    assert ev is None and data_kind(train) == "paired" and len(train) == 2
    assert report.counts["no_counterpart"] == 1
    data = _data([_src("kto_mix", "kto_mix.jsonl")], transform="pair", strict=True)
    with pytest.raises(PrefoptError, match="strict mode"):
        prepare(data.train, None, data, "dpo", FIXTURES, 0)


def test_prepare_multiple_sources_and_eval_sources():
    data = _data(
        [
            _src("stack_exchange", FIXTURES / "stack_exchange.json"),
            _src("sharegpt_ranking", FIXTURES / "sharegpt_ranking.json"),
        ],
        eval=[_src("stack_exchange", FIXTURES / "stack_exchange.json")],
    )
    train, ev, report = prepare(data.train, data.eval, data, "dpo", None, 7)
    assert len(train) == 1 + 4 and len(ev) == 1
    assert any("appear in both" in n for n in report.notes)
    mixed = _data(
        [
            _src("stack_exchange", FIXTURES / "stack_exchange.json", format="text"),
            _src("sharegpt_ranking", FIXTURES / "sharegpt_ranking.json"),
        ]
    )
    with pytest.raises(PrefoptError, match="mix text and conversational"):
        prepare(mixed.train, None, mixed, "dpo", None, 0)


def test_prepare_empty_source_names_source_and_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"chosen": "x"}\n')
    data = _data([_src("stack_exchange", tmp_path / "bad.jsonl")])
    with pytest.raises(PrefoptError) as e:
        prepare(data.train, None, data, "dpo", None, 0)
    assert (
        "stack_exchange" in str(e.value) and "bad.jsonl" in str(e.value) and "malformed_row" in str(e.value)
    )


def test_prepare_canonicalises_third_party_sources():
    """A source returning Dataset.from_list rows (like the ground-truth world) gets canonical features."""

    @register_source("test_data_transforms_plain")
    def plain(spec, *, base_dir=None, seed=0, report=None):
        report.rows_in += 2
        return Dataset.from_list(
            [
                {
                    "prompt": "1+1=",
                    "chosen": "2",
                    "rejected": "3",
                    "prompt_id": "x",
                    "source": "plain",
                    "score_chosen": None,
                },
                {
                    "prompt": "2+2=",
                    "chosen": "4",
                    "rejected": "5",
                    "prompt_id": "y",
                    "source": "plain",
                    "score_chosen": None,
                },
            ]
        )

    data = _data([SourceSection(source="test_data_transforms_plain")], shuffle=False)
    train, _, report = prepare(data.train, None, data, "dpo", None, 0)
    assert train.features == features("paired", "text")
    assert train["prompt_id"] == [compute_prompt_id("1+1="), compute_prompt_id("2+2=")]
    assert report.rows_in == 2 and report.rows_out == 2
