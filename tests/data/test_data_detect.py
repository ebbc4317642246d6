"""`prefopt data inspect | convert` without --source: every published shape prefopt reads is recognised
from its columns and first rows, the choice is said, and an unsure guess is an exit-2 error listing the
candidates with the --source line to run."""

from __future__ import annotations

import json

import pytest
from data_helpers import FIXTURES, SHARED_DATA

from prefopt.cli import main
from prefopt.config.smoke import FIXTURES_DIR as SMOKE_FIXTURES
from prefopt.core.errors import PrefoptError
from prefopt.data.registry import choose_source, read_sample
from prefopt.data.schema import data_kind

# file → (source, options the detection must add); None: no published shape (a columns: mapping is needed)
SHARED = {
    "anthropics_hh-rlhf__harmless-base__test.jsonl": ("hh_rlhf", {}),
    "hiyouga_LLaMA-Factory__dpo_en_demo.json": ("sharegpt_ranking", {}),
    "hiyouga_LLaMA-Factory__kto_en_demo.json": ("messages_label", {}),
    "hiyouga_LLaMA-Factory__v1_dpo_demo.jsonl": (
        "jsonl",
        {"columns": {"chosen": "chosen_messages", "rejected": "rejected_messages"}},
    ),
    "pytorch_torchtune__stack_exchange_paired_tiny.json": ("stack_exchange", {}),
}
TEST_FIXTURES = {
    "generic_text.jsonl": None,
    "generic_unpaired.jsonl": None,
    "hh_rlhf.jsonl": ("hh_rlhf", {}),
    "kto_mix.jsonl": ("kto_mix", {}),
    "messages_label.json": ("messages_label", {}),
    "messages_label_kto_tag.jsonl": (
        "messages_label",
        {"columns": {"messages": "conversations", "label": "kto_tag"}},
    ),
    "sharegpt_ranking.json": ("sharegpt_ranking", {}),
    "stack_exchange.json": ("stack_exchange", {}),
    "ultrafeedback_argilla.jsonl": ("ultrafeedback_argilla", {}),
    "ultrafeedback_argilla_v1.jsonl": ("ultrafeedback_argilla", {}),
    "ultrafeedback_h4.jsonl": ("ultrafeedback_h4", {}),
    "ultrafeedback_raw.jsonl": ("ultrafeedback_raw", {}),
    "ultrafeedback_trl.jsonl": ("ultrafeedback_trl", {}),
}
SMOKE = {p.name: (p.stem, {}) for p in SMOKE_FIXTURES.glob("*.json*")}

CASES = [pytest.param(FIXTURES / n, e, id=f"tests/{n}") for n, e in TEST_FIXTURES.items()]
CASES += [pytest.param(SMOKE_FIXTURES / n, e, id=f"smoke/{n}") for n, e in sorted(SMOKE.items())]
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real samples not found at {SHARED_DATA}")
CASES += [pytest.param(SHARED_DATA / n, e, id=f"shared/{n}", marks=needs_shared) for n, e in SHARED.items()]


def test_every_fixture_file_is_listed():
    """A new fixture or shared sample must be added to the tables above (else it goes untested)."""
    assert {p.name for p in FIXTURES.iterdir()} == set(TEST_FIXTURES)
    assert set(SMOKE) == {"hh_rlhf.jsonl", "kto_mix.jsonl", "messages_label.json", "sharegpt_ranking.json",
                          "stack_exchange.json", "ultrafeedback_argilla.jsonl", "ultrafeedback_h4.jsonl",
                          "ultrafeedback_raw.jsonl", "ultrafeedback_trl.jsonl"}  # fmt: skip
    if SHARED_DATA.is_dir():
        assert {p.name for p in SHARED_DATA.glob("*.json*")} == set(SHARED)


@pytest.mark.parametrize("path, expected", CASES)
def test_detected_as_the_right_source(path, expected):
    sample = read_sample(str(path), base_dir=None, split=None, where="test")
    if expected is None:
        with pytest.raises(PrefoptError, match="none of the published formats") as err:
            choose_source(sample, where="test")
        assert "--source jsonl -o 'columns={prompt: <col>" in str(err.value)
        return
    found = choose_source(sample, where="test")
    assert (found.source, found.options) == expected
    assert found.reason


def _kind(source: str, options: dict) -> str:
    return "unpaired" if source in ("kto_mix", "messages_label") else "paired"


@pytest.mark.parametrize("path, expected", CASES)
def test_inspect_and_convert_without_source(path, expected, tmp_path, capsys):
    """Through the top-level CLI (exit codes and messages as a user sees them): recognised files are
    inspected and converted with exit 0 and say which source read them; the others exit 2 with the
    --source line, and no traceback either way."""
    code = main(["data", "inspect", str(path), "--tokenizer", "none", "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if expected is None:
        assert code == 2 and "--source jsonl" in err
        return
    assert code == 0, err
    summary = json.loads(out)
    assert summary["source"]["name"] == expected[0] and summary["source"]["recognised_from"]
    assert summary["rows"] > 0

    dest = tmp_path / "out.jsonl"
    kind = _kind(*expected)
    code = main(["data", "convert", "--input", str(path), "--to", kind, "--output", str(dest)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"source: {expected[0]} (recognised:" in err and "Traceback" not in err
    rows = [json.loads(line) for line in dest.read_text().splitlines()]
    assert rows and all(("chosen" in r) == (kind == "paired") for r in rows)
    # what convert wrote is prefopt's canonical form, recognised as such
    again = choose_source(read_sample(str(dest), base_dir=None, split=None, where="t"), where="t")
    assert again.source == "jsonl" and "prefopt's canonical" in again.reason


def test_text_inspection_names_the_source(capsys):
    code = main(["data", "inspect", str(FIXTURES / "messages_label_kto_tag.jsonl"), "--tokenizer", "none"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0] == (
        "source: messages_label (recognised: conversations (a whole conversation) + bool kto_tag "
        "(LLaMA-Factory KTO, kto_en_demo); same as --source messages_label "
        "-o 'columns={messages: conversations, label: kto_tag}')"
    )


def test_unsure_guess_lists_candidates_with_their_command_lines(tmp_path, capsys):
    """Implicit-prompt conversations without scores: TRL's UltraFeedback shape or a generic file —
    both read it, neither is sure, so the user is asked with both lines."""
    path = tmp_path / "pairs.jsonl"
    row = {
        "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
    }
    path.write_text(json.dumps(row) + "\n")
    code = main(
        ["data", "convert", "--input", str(path), "--to", "paired", "--output", str(tmp_path / "o.jsonl")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "cannot tell for sure" in err
    for source in ("jsonl", "ultrafeedback_trl"):
        assert f"`prefopt data convert --source {source} --input {path} --to paired" in err
    assert not (tmp_path / "o.jsonl").exists()
    # the suggested line works
    code = main(["data", "convert", "--source", "jsonl", "--input", str(path), "--to", "paired",
                 "--output", str(tmp_path / "o.jsonl")])  # fmt: skip
    assert code == 0


def test_inspect_of_a_file_whose_rows_are_all_dropped(tmp_path, capsys):
    """The KeyError: 'identical_pairs' traceback: a paired source that keeps no row (here ShareGPT
    ranking data read by the generic reader) prints zero counts instead."""
    path = tmp_path / "ranking.json"
    path.write_text((FIXTURES / "sharegpt_ranking.json").read_text())
    code = main(["data", "inspect", str(path), "--source", "json", "--tokenizer", "none"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in out + err
    assert "0 rows, paired" in out and "identical chosen/rejected: 0" in out


def test_user_options_win_over_detected_ones():
    from prefopt.cli.data import resolve_source

    path = str(FIXTURES / "messages_label_kto_tag.jsonl")
    name, options, why = resolve_source(None, path, None, {"columns": {"messages": "conversations",
                                        "label": "kto_tag"}, "roles": {"bot": "assistant"}}, None, "t")  # fmt: skip
    assert name == "messages_label" and options["roles"] == {"bot": "assistant"} and why
    assert resolve_source("kto_mix", path, None, {}, None, "t") == ("kto_mix", {}, None)


def test_detected_dataset_matches_the_named_source():
    """Detection only picks the reader; the rows are exactly what --source gives."""
    from data_helpers import read

    sample = read_sample(str(FIXTURES / "ultrafeedback_h4.jsonl"), base_dir=None, split=None, where="t")
    found = choose_source(sample, where="t")
    a, _ = read(found.source, FIXTURES / "ultrafeedback_h4.jsonl", **found.options)
    b, _ = read("ultrafeedback_h4", FIXTURES / "ultrafeedback_h4.jsonl")
    assert a.to_list() == b.to_list() and data_kind(a) == "paired"
