"""The bad-input battery of the judge commands (issue 14, items 4–6): ``prefopt data generate``,
``prefopt data agree`` and ``prefopt eval --judge``. Every case must end in exit 2 with one paragraph
naming the file and the field — and, except for a judge that raises at run time, before any model loads.
Then the commands working: generate writes rows with provenance, its report and state beside the output
and resumes; a judge that raises names the config, the judge key and the prompt index, and the rerun
resumes after the finished chunks; agree reports accuracy, κ and balanced positions."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from test_battery_inputs import _model_dir

from prefopt import cli

TRUE_REWARD = "prefopt.world:TASKS.arith.reward"
PROMPTS = [f"{a}+{b}=" for a, b in [(1, 2), (3, 4), (10, 5), (7, 7), (20, 21), (2, 9)]]

JUDGE_MODULE = """
def raises_on_7(prompt, reply):
    if prompt == "7+7=":
        raise ValueError("cannot judge this prompt")
    return float(len(reply))
"""


def _gen(tmp: Path, *, prompts_file: str | None = "prompts.txt", lines=PROMPTS, **over) -> list[str]:
    """A generate config in ``tmp`` (builtin policy, the true reward as judge), with ``over`` merged."""
    if prompts_file is not None and lines is not None:
        (tmp / prompts_file).write_text("".join(p + "\n" for p in lines))
    cfg = {
        "seed": 0,
        "prompts": {"file": prompts_file},
        "model": {"name": "builtin:tiny-arith"},
        "generation": {"k": 2, "temperature": 1.0, "max_new_tokens": 3, "chunk_size": 2},
        "judge": {"type": "callable", "function": TRUE_REWARD},
        "pairing": "best_vs_worst",
        "output": "out/pairs.jsonl",
    }
    for k, v in over.items():
        if v is None:
            cfg.pop(k, None)
        elif k in ("generation", "prompts") and isinstance(v, dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    p = tmp / "gen.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return ["data", "generate", "--config", str(p)]


def _raising_judge(tmp: Path, monkeypatch) -> dict:
    (tmp / "judges_for_test.py").write_text(JUDGE_MODULE)
    monkeypatch.syspath_prepend(str(tmp))
    return {"type": "callable", "function": "judges_for_test:raises_on_7"}


def _pairs(tmp: Path, rows=None) -> Path:
    rows = rows if rows is not None else [{"prompt": p, "chosen": "3", "rejected": "4"} for p in PROMPTS]
    f = tmp / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def _agree(tmp: Path, *judges: str, extra=()) -> list[str]:
    argv = ["data", "agree", "--pairs", str(_pairs(tmp))]
    for j in judges:
        argv += ["--judge", j]
    return [*argv, *extra]


def _judge_file(tmp: Path, block: dict, name="judge.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump({"judge": block}))
    return p


def _eval(tmp: Path, *extra: str) -> list[str]:
    run = tmp / "run"
    _model_dir(run, "model.safetensors")  # a saved model (never loaded: the errors come first)
    (run / "resolved.yaml").write_text(
        yaml.safe_dump(
            {
                "algorithm": "dpo",
                "model": {"name": "builtin:tiny-arith"},
                "data": {"train": [{"source": "world"}]},
            }
        )
    )
    return ["eval", "--run", str(run), *extra]


# each case: (id, builder(tmp, monkeypatch) -> argv, substrings the message must hold, file named, a model loads)
CASES = [
    # ---- data generate: the config ------------------------------------------------------------
    (
        "gen-missing-judge",
        lambda t, m: _gen(t, judge=None),
        ["judge", "no judge is configured"],
        "gen.yaml",
        False,
    ),
    (
        "gen-unknown-judge-type",
        lambda t, m: _gen(t, judge={"type": "reward-model", "path": "x"}),
        ["judge.type", "reward_model"],
        "gen.yaml",
        False,
    ),
    (
        "gen-judge-unknown-key",
        lambda t, m: _gen(t, judge={"type": "callable", "function": TRUE_REWARD, "fn": 1}),
        ["judge.fn"],
        "gen.yaml",
        False,
    ),
    (
        "gen-callable-not-importable",
        lambda t, m: _gen(t, judge={"type": "callable", "function": "no_such_module_x:f"}),
        ["judge.function", "no_such_module_x"],
        "gen.yaml",
        False,
    ),
    (
        "gen-reward-model-causal-lm-head",
        lambda t, m: _gen(t, judge={"type": "reward_model", "path": str(_model_dir(t, "model.safetensors"))}),
        ["judge.path", "LlamaForCausalLM", "not a sequence-classification model"],
        "gen.yaml",
        False,
    ),
    (
        "gen-reward-model-missing",
        lambda t, m: _gen(t, judge={"type": "reward_model", "path": "rms/none"}),
        ["judge.path", "neither a local directory"],
        "gen.yaml",
        False,
    ),
    (
        "gen-ensemble-member-bad-head",
        lambda t, m: _gen(
            t,
            judge={
                "type": "ensemble",
                "combine": "mean",
                "judges": [
                    {"type": "callable", "function": TRUE_REWARD},
                    {"type": "reward_model", "path": str(_model_dir(t, "model.safetensors"))},
                ],
            },
        ),
        ["judge.judges[1].path", "LlamaForCausalLM"],
        "gen.yaml",
        False,
    ),
    (
        "gen-k-1",
        lambda t, m: _gen(t, generation={"k": 1}),
        ['"generation.k" = 1', "k ≥ 2"],
        "gen.yaml",
        False,
    ),
    (
        "gen-k-0-unpaired",
        lambda t, m: _gen(t, generation={"k": 0}, pairing="unpaired", threshold=0.5),
        ["generation.k"],
        "gen.yaml",
        False,
    ),
    (
        "gen-empty-prompts-file",
        lambda t, m: _gen(t, lines=[]),
        ["prompts", "gave no prompts"],
        "gen.yaml",
        False,
    ),
    (
        "gen-blank-prompts-file",
        lambda t, m: _gen(t, lines=["", "   "]),
        ["prompts", "gave no prompts"],
        "gen.yaml",
        False,
    ),
    (
        "gen-missing-prompts-file",
        lambda t, m: _gen(t, prompts_file="nope.txt", lines=None),
        ["prompts.file", "nope.txt", "does not exist"],
        "gen.yaml",
        False,
    ),
    (
        "gen-prompts-jsonl-without-prompt-column",
        lambda t, m: (
            (t / "p.jsonl").write_text('{"text": "1+1="}\n'),
            _gen(t, prompts_file=None, lines=None, prompts={"file": "p.jsonl"}),
        )[1],
        ["line 1", "prompts.field"],
        "gen.yaml",
        False,
    ),
    (
        "gen-prompts-file-and-source",
        lambda t, m: _gen(t, prompts={"source": "world"}),
        ["exactly one of prompts.file", "prompts.source"],
        "gen.yaml",
        False,
    ),
    (
        "gen-unknown-engine",
        lambda t, m: _gen(t, generation={"engine": "transformer"}),
        ['"generation.engine"', 'Did you mean "transformers"'],
        "gen.yaml",
        False,
    ),
    (
        "gen-unknown-generation-key",
        lambda t, m: _gen(t, generation={"n": 4}),
        ['unknown key "generation.n"'],
        "gen.yaml",
        False,
    ),
    (
        "gen-unknown-pairing",
        lambda t, m: _gen(t, pairing="best_vs_wrost"),
        ['unknown pairing "best_vs_wrost"', 'Did you mean "best_vs_worst"'],
        "gen.yaml",
        False,
    ),
    (
        "gen-unpaired-without-threshold",
        lambda t, m: _gen(t, pairing="unpaired"),
        ['"threshold" is missing'],
        "gen.yaml",
        False,
    ),
    (
        "gen-unpaired-with-llm-judge",
        lambda t, m: _gen(
            t,
            pairing="unpaired",
            threshold=0.5,
            judge={"type": "llm", "model": "builtin:tiny-arith", "template": "{prompt} {reply_a} {reply_b}"},
        ),
        ['"pairing" = "unpaired"', "llm judge"],
        "gen.yaml",
        False,
    ),
    (
        "gen-negative-temperature",
        lambda t, m: _gen(t, generation={"temperature": [1.0, -0.5]}),
        ["generation.temperature", "-0.5"],
        "gen.yaml",
        False,
    ),
    (
        "gen-missing-output",
        lambda t, m: _gen(t, output=None),
        ['missing required key "output"'],
        "gen.yaml",
        False,
    ),
    (
        "gen-output-is-a-directory",
        lambda t, m: ((t / "outdir").mkdir(), _gen(t, output="outdir"))[1],
        ['"output"', "is a directory"],
        "gen.yaml",
        False,
    ),
    (
        "gen-vllm-not-installed",
        lambda t, m: _gen(t, generation={"engine": "vllm"}),
        ["generation.engine", "vllm"],
        "gen.yaml",
        False,
    ),
    (
        "gen-bad-set-override",
        lambda t, m: [*_gen(t), "--set", "generation.k=1"],
        ['"generation.k" = 1'],
        "gen.yaml",
        False,
    ),
    (
        "gen-missing-config",
        lambda t, m: ["data", "generate", "--config", str(t / "none.yaml")],
        ["does not exist"],
        "none.yaml",
        False,
    ),
    # ---- data generate: at run time -----------------------------------------------------------
    (
        "gen-judge-raises",
        lambda t, m: _gen(t, judge=_raising_judge(t, m)),
        ["judge:", "raised ValueError", "cannot judge this prompt", "on prompt 3", "'7+7='"],
        "gen.yaml",
        True,
    ),
    # ---- data agree ---------------------------------------------------------------------------
    (
        "agree-one-judge",
        lambda t, m: _agree(t, "{type: callable, function: 'prefopt.world:TASKS.arith.reward'}"),
        ["1 judge(s) given", "at least 2"],
        "prefopt data agree",
        False,
    ),
    (
        "agree-unknown-judge-type",
        lambda t, m: _agree(
            t, "{type: callable, function: 'prefopt.world:TASKS.arith.reward'}", "{type: rm}"
        ),
        ["--judge #2", 'unknown judge type "rm"'],
        "--judge #2",
        False,
    ),
    (
        "agree-judge-file-bad-head",
        lambda t, m: _agree(
            t,
            str(_judge_file(t, {"type": "callable", "function": TRUE_REWARD})),
            str(
                _judge_file(
                    t, {"type": "reward_model", "path": str(_model_dir(t, "model.safetensors"))}, "rm.yaml"
                )
            ),
        ),
        ["judge.path", "LlamaForCausalLM"],
        "rm.yaml",
        False,
    ),
    (
        "agree-judge-file-missing",
        lambda t, m: _agree(
            t, str(t / "rm.yaml"), "{type: callable, function: 'prefopt.world:TASKS.arith.reward'}"
        ),
        ["judge file", "does not exist"],
        "rm.yaml",
        False,
    ),
    (
        "agree-pairs-missing",
        lambda t, m: [
            "data",
            "agree",
            "--pairs",
            str(t / "none.jsonl"),
            "--human",
            "--judge",
            "{type: callable, function: 'prefopt.world:TASKS.arith.reward'}",
        ],
        ["--pairs", "does not exist"],
        "none.jsonl",
        False,
    ),
    (
        "agree-pairs-not-paired",
        lambda t, m: (
            _pairs(t, [{"prompt": "1+1=", "completion": "2", "label": True}]),
            [
                "data",
                "agree",
                "--pairs",
                str(t / "pairs.jsonl"),
                "--human",
                "--judge",
                "{type: callable, function: 'prefopt.world:TASKS.arith.reward'}",
            ],
        )[1],
        ["line 1", "chosen, rejected"],
        "pairs.jsonl",
        False,
    ),
    (
        "agree-config-unknown-key",
        lambda t, m: (
            (t / "judges.yaml").write_text("judgs: []\n"),
            ["data", "agree", "--pairs", str(_pairs(t)), "--config", str(t / "judges.yaml")],
        )[1],
        ['unknown key "judgs"'],
        "judges.yaml",
        False,
    ),
    # ---- eval --judge -------------------------------------------------------------------------
    (
        "eval-against-without-judge",
        lambda t, m: _eval(t, "--against", str(t)),
        ["--against", "needs --judge"],
        "command line",
        False,
    ),
    (
        "eval-judge-bad-block",
        lambda t, m: _eval(t, "--judge", "{type: callable}"),
        ['missing required key "judge.function"'],
        "--judge #1",
        False,
    ),
    (
        "eval-judge-reward-model-bad-head",
        lambda t, m: _eval(
            t,
            "--judge",
            str(
                _judge_file(
                    t, {"type": "reward_model", "path": str(_model_dir(t, "model.safetensors", name="lm"))}
                )
            ),
        ),
        ["judge.path", "LlamaForCausalLM"],
        "judge.yaml",
        False,
    ),
    (
        "eval-against-not-a-run",
        lambda t, m: _eval(
            t,
            "--judge",
            str(_judge_file(t, {"type": "callable", "function": TRUE_REWARD})),
            "--against",
            str(t / "nowhere"),
        ),
        ["--against", "holds no saved model"],
        "nowhere",
        False,
    ),
]


def test_battery_has_the_issue_cases():
    ids = {c[0] for c in CASES}
    for needed in (
        "gen-missing-judge",
        "gen-judge-raises",
        "gen-reward-model-causal-lm-head",
        "gen-k-1",
        "gen-empty-prompts-file",
        "gen-unknown-engine",
    ):
        assert needed in ids
    assert len(CASES) >= 30


@pytest.mark.parametrize(("case", "build", "expected", "file", "loads"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2(case, build, expected, file, loads, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if case == "gen-vllm-not-installed":
        try:
            import vllm  # noqa: F401

            pytest.skip("vllm is installed here")
        except ImportError:
            pass
    if not loads:  # nothing may load a model before the error
        import prefopt.judge.generate_config as gc
        import prefopt.model.loading as loading

        def refuse(*a, **k):
            raise AssertionError("a model was loaded before the input error")

        for mod in (gc, loading):
            monkeypatch.setattr(mod, "load_model", refuse)
            monkeypatch.setattr(mod, "load_trained", refuse)
    argv = build(tmp_path, monkeypatch)
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("prefopt: error:")]
    assert len(lines) == 1, err
    for part in expected:
        assert part in err, f"{part!r} not in: {err}"
    assert file in err, f"{file} not named: {err}"
    assert not (tmp_path / "out" / "pairs.jsonl").exists()


# ------------------------------------------------------------------------------------------ working
def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_writes_rows_report_and_state_and_resumes(tmp_path, capsys):
    argv = _gen(tmp_path, generation={"k": 4, "temperature": [0.7, 1.0]})
    assert cli.main(argv) == 0
    out = tmp_path / "out" / "pairs.jsonl"
    rows = _rows(out)
    report = json.loads((tmp_path / "out" / "pairs.jsonl.report.json").read_text())
    state = tmp_path / "out" / "pairs.jsonl.state.jsonl"
    assert state.exists()
    # every prompt is either a row or a counted drop
    pair = next(s for s in report["drops"]["steps"] if s["step"] == "pair")
    assert (pair["rows_in"], pair["rows_out"]) == (len(PROMPTS), len(rows)), report["drops"]
    for r in rows:
        prov = r["provenance"]
        assert prov["judge"] == f"callable:{TRUE_REWARD}" and prov["pairing"] == "best_vs_worst"
        assert len(prov["scores"]) <= 8 and prov["chosen"]["temperature"] in (0.7, 1.0)
        assert r["score_chosen"] > r["score_rejected"]
    assert report["stats"]["prompts"] == len(PROMPTS) and report["stats"]["resumed_prompts"] == 0
    capsys.readouterr()
    assert cli.main(argv) == 0  # again: everything comes from the state file, the same rows
    assert "resumed: 6 prompts" in capsys.readouterr().err
    assert _rows(out) == rows


def test_a_judge_that_raises_stops_then_the_fixed_run_resumes(tmp_path, monkeypatch, capsys):
    judge = _raising_judge(tmp_path, monkeypatch)
    argv = _gen(tmp_path, judge=judge)
    assert cli.main(argv) == 2
    state = tmp_path / "out" / "pairs.jsonl.state.jsonl"
    finished = [json.loads(x) for x in state.read_text().splitlines()[1:]]
    assert sorted(r["index"] for r in finished) == [0, 1]  # the chunk before the failing prompt (3)
    assert not (tmp_path / "out" / "pairs.jsonl").exists()
    # the fix: the same judge's name and settings, a prompt it can judge (the state file is keyed by the
    # prompt, so the rerun redoes exactly the unfinished chunks)
    (tmp_path / "judges_for_test.py").write_text(JUDGE_MODULE.replace('"7+7="', '"never"'))
    import importlib
    import sys

    sys.modules.pop("judges_for_test", None)
    importlib.invalidate_caches()
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert "resumed: 2 prompts" in capsys.readouterr().err


def test_dry_run_reads_prompts_and_loads_no_model(tmp_path, capsys, monkeypatch):
    import prefopt.judge.generate_config as gc

    monkeypatch.setattr(gc, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert cli.main([*_gen(tmp_path, lines=[*PROMPTS, PROMPTS[0]]), "--dry-run"]) == 0
    assert "6 prompts" in capsys.readouterr().out  # the repeat is dropped


def test_agree_reports_accuracy_kappa_and_balanced_positions(tmp_path, capsys):
    rows = [
        {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
        for a in range(8)
        for b in range(5)
    ]
    pairs = _pairs(tmp_path, rows)
    jfile = _judge_file(tmp_path, {"type": "callable", "function": TRUE_REWARD, "name": "truth"})
    argv = ["data", "agree", "--pairs", str(pairs), "--human", "--json", "--judge", str(jfile)]
    argv += ["--judge", "{type: callable, function: 'prefopt.world:TASKS.arith.reward', name: truth}"]
    assert cli.main(argv) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["n_pairs"] == 40 and 10 < table["chosen_in_position_b"] < 30
    assert set(table["judges"]) == {"truth", "truth#2"}
    acc = table["judges"]["truth"]["human"]
    assert acc["accuracy"] == 1.0 and acc["decided"] == 40
    pair = table["pairs"]["truth vs truth#2"]
    assert pair["agreement"] == 1.0 and pair["kappa"] == pytest.approx(1.0)
    # the wrong answer is one longer only when a+b+1 gains a digit: the longer reply rarely wins
    assert table["judges"]["truth"]["length_bias"]["longer_win_rate"] == 0.0


def test_agree_config_with_named_judges(tmp_path, capsys):
    _pairs(tmp_path)
    (tmp_path / "judges.yaml").write_text(
        textwrap.dedent(
            f"""\
            pairs: pairs.jsonl
            human: true
            judges:
              truth: {{type: callable, function: "{TRUE_REWARD}"}}
              world: {{type: callable, function: "prefopt.world:world_reward"}}
            """
        )
    )
    assert cli.main(["data", "agree", "--config", str(tmp_path / "judges.yaml")]) == 0
    out = capsys.readouterr().out
    assert "truth vs world" in out and "Cohen's κ" in out


def test_generate_reports_length_bias_and_agreement_with_check_judges(tmp_path, monkeypatch, capsys):
    """A length judge made the data: the longer reply was always chosen, a second copy of it agrees on
    every pair (κ 1), and both figures are printed and saved in the report."""
    (tmp_path / "len_judge.py").write_text("def score(prompt, reply):\n    return float(len(reply))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    block = {"type": "callable", "function": "len_judge:score"}
    argv = _gen(
        tmp_path,
        generation={"k": 4},
        judge={**block, "name": "length"},
        check_judges=[{**block, "name": "again"}],
    )
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "pairs.jsonl.report.json").read_text())
    table = report["figures"]["agreement"]
    n = len(_rows(tmp_path / "out" / "pairs.jsonl"))
    assert n > 0 and table["n_pairs"] == n
    assert table["judges"]["length"]["length_bias"]["longer_win_rate"] == 1.0
    assert table["pairs"]["length vs again"]["agreement"] == 1.0
    assert "length vs again: agreement 1.000" in err


def test_the_policy_can_be_a_run_directory_relative_to_the_config(tmp_path, capsys):
    """model.name: a folder holding model/ as `prefopt train` saves it, written relative to the config."""
    from prefopt.model.loading import build_builtin, load_tokenizer

    d = tmp_path / "runs" / "r1" / "model"
    build_builtin("tiny-arith", 3).save_pretrained(d)
    load_tokenizer("builtin:tiny-arith").save_pretrained(d)
    argv = _gen(
        tmp_path,
        model={"name": "runs/r1"},
        judge={"type": "callable", "function": "prefopt.world:world_reward"},
    )
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "out" / "pairs.jsonl.report.json").read_text())
    assert report["stats"]["prompts"] == len(PROMPTS)
