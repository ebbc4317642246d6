"""`prefopt data convert | inspect | sources` through argparse, as the top-level CLI wires them."""

from __future__ import annotations

import argparse
import json

import pytest
from data_helpers import FIXTURES

from prefopt.cli.data import add_data_commands, parse_options
from prefopt.core.errors import PrefoptError
from prefopt.data.inspect import kto_weights


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="prefopt")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_convert_paired_to_unpaired_with_report(tmp_path, capsys):
    out, rep = tmp_path / "out.jsonl", tmp_path / "report.json"
    code = run(
        [
            "data",
            "convert",
            "--source",
            "ultrafeedback_h4",
            "--input",
            str(FIXTURES / "ultrafeedback_h4.jsonl"),
            "--to",
            "unpaired",
            "--output",
            str(out),
            "--report",
            str(rep),
        ]
    )
    assert code == 0
    rows = _lines(out)
    assert len(rows) == 4 and [r["label"] for r in rows] == [True, False, True, False]
    assert set(rows[0]) == {"prompt", "completion", "label", "prompt_id", "source", "score"}
    assert list(rows[0]["prompt"][0]) == ["role", "content"]
    report = json.loads(rep.read_text())
    assert report["rows_in"] == 9 and report["rows_out"] == 4 and report["drops"]["score_tie"] == 1
    assert "score_tie" in capsys.readouterr().err


def test_convert_strict_fails_after_saving_the_report(tmp_path):
    rep = tmp_path / "report.json"
    with pytest.raises(PrefoptError, match="strict mode"):
        run(
            [
                "data",
                "convert",
                "--source",
                "hh_rlhf",
                "--input",
                str(FIXTURES / "hh_rlhf.jsonl"),
                "--to",
                "paired",
                "--output",
                str(tmp_path / "o.jsonl"),
                "--report",
                str(rep),
                "--strict",
            ]
        )
    assert rep.exists() and not (tmp_path / "o.jsonl").exists()


def test_convert_options_trl_and_text_formats(tmp_path):
    out = tmp_path / "trl.jsonl"
    run(
        [
            "data",
            "convert",
            "--source",
            "ultrafeedback_raw",
            "--input",
            str(FIXTURES / "ultrafeedback_raw.jsonl"),
            "--to",
            "paired",
            "--output",
            str(out),
            "-o",
            "binarize=best_vs_worst",
            "-o",
            "keep_ties=true",
            "--format",
            "trl",
        ]
    )
    rows = _lines(out)
    assert len(rows) == 4 and set(rows[0]) == {"prompt", "chosen", "rejected"}
    out = tmp_path / "text.jsonl"
    run(
        [
            "data",
            "convert",
            "--source",
            "kto_mix",
            "--input",
            str(FIXTURES / "kto_mix.jsonl"),
            "--to",
            "paired",
            "--output",
            str(out),
            "--format",
            "text",
        ]
    )
    rows = _lines(out)
    assert rows[0]["prompt"].endswith("<|assistant|>") and isinstance(rows[0]["chosen"], str)
    out = tmp_path / "pairs.parquet"
    run(
        [
            "data",
            "convert",
            "--source",
            "kto_mix",
            "--input",
            str(FIXTURES / "kto_mix.jsonl"),
            "--to",
            "paired",
            "--pair-mode",
            "all",
            "--output",
            str(out),
        ]
    )
    assert out.exists()
    assert parse_options(["columns={prompt: q, chosen: a}", "threshold=4.5"]) == {
        "columns": {"prompt": "q", "chosen": "a"},
        "threshold": 4.5,
    }
    with pytest.raises(PrefoptError, match="KEY=VALUE"):
        parse_options(["oops"])


def test_inspect_reports_balance_lengths_ties(tmp_path, capsys):
    out = tmp_path / "u.jsonl"
    run(
        [
            "data",
            "convert",
            "--source",
            "ultrafeedback_raw",
            "--input",
            str(FIXTURES / "ultrafeedback_raw.jsonl"),
            "--to",
            "unpaired",
            "--output",
            str(out),
            "-o",
            "binarize=unpaired",
            "-o",
            "threshold=7",
        ]
    )
    capsys.readouterr()
    assert run(["data", "inspect", str(out), "--json", "--max-length", "20"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["labels"] == {"desirable": 8, "undesirable": 4}
    assert info["kto_weights"]["in_range"] is False
    assert info["kto_weights"]["suggested"] == {"desirable_weight": 1.0, "undesirable_weight": 1.51}
    assert info["tokens"]["prompt"]["max"] > 0 and info["tokens"]["rows_over_max_length"] > 0
    # raw source with ties: inspect counts them instead of dropping them
    assert (
        run(["data", "inspect", str(FIXTURES / "ultrafeedback_h4.jsonl"), "--source", "ultrafeedback_h4"])
        == 0
    )
    text = capsys.readouterr().out
    assert "score ties: 1" in text and "tokens" in text


def test_sources_lists_everything(capsys):
    assert run(["data", "sources"]) == 0
    text = capsys.readouterr().out
    for name in ("ultrafeedback_h4", "ultrafeedback_raw", "hh_rlhf", "jsonl", "binarize"):
        assert name in text
    run(["data", "sources", "hh_rlhf"])
    assert "exact tags" in capsys.readouterr().out  # the module documentation is shown


def test_kto_weights_rule():
    # the suggestion is what prefopt train sets without weights: the rule's upper end, 1.33
    assert kto_weights(100, 100)["in_range"] and kto_weights(100, 100)["suggested"] == {
        "desirable_weight": 1.33,
        "undesirable_weight": 1.0,
    }
    low = kto_weights(50, 100)  # desirable minority: weight it up to a 1.33 ratio
    assert low["suggested"] == {"desirable_weight": 2.66, "undesirable_weight": 1.0}
    assert low["desirable_weight_range"] == [2.0, 2.667]
    assert kto_weights(0, 10)["suggested"] is None
