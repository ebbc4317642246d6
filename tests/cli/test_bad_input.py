"""The bad-input battery: every case exits 2 with one paragraph naming the file/field/row and the fix,
and no traceback (``--debug`` shows one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prefopt import cli

PAIR = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}


def _recipe(tmp: Path, data_rows=None, *, algorithm="dpo", data=None, data_extra=None, **sections) -> Path:
    if data is None:
        f = tmp / "data.jsonl"
        f.write_text(
            "".join(json.dumps(r) + "\n" for r in (data_rows if data_rows is not None else [PAIR] * 4))
        )
        data = {"train": [{"source": "jsonl", "path": "data.jsonl"}], **(data_extra or {})}
    recipe = {
        "algorithm": algorithm,
        "model": {"name": "builtin:tiny-arith"},
        "data": data,
        "training": {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 32},
        "evaluation": {"enabled": False},
    }
    for k, v in sections.items():
        recipe[k] = (
            {**recipe.get(k, {}), **v} if isinstance(v, dict) and isinstance(recipe.get(k), dict) else v
        )
    p = tmp / "recipe.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


def _no_template_tokenizer(tmp: Path) -> str:
    from prefopt.model.loading import load_tokenizer

    tok = load_tokenizer("builtin:tiny-arith")
    tok.chat_template = None
    d = tmp / "tok"
    tok.save_pretrained(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    for extra in d.glob("chat_template*"):
        extra.unlink()
    return str(d)


CHAT = {
    "prompt": [{"role": "user", "content": "hi"}],
    "chosen": [{"role": "assistant", "content": "hello"}],
    "rejected": [{"role": "assistant", "content": "go"}],
}

# each case: (id, builder(tmp) -> argv list, substrings the message must contain)
CASES = [
    (
        "yaml-syntax",
        lambda t: _raw(t, "algorithm: dpo\nmodel:\n  name: x\n bad: 1\n"),
        ["line 4", "YAML syntax error"],
    ),
    ("recipe-not-mapping", lambda t: _raw(t, "- a\n- b\n"), ["mapping of sections"]),
    ("missing-recipe", lambda t: ["train", "--config", str(t / "nope.yaml")], ["does not exist"]),
    (
        "unknown-key",
        lambda t: _args(_recipe(t, training={"learnig_rate": 1e-5})),
        ["training.learnig_rate", 'Did you mean "learning_rate"'],
    ),
    (
        "unknown-section",
        lambda t: _args(
            _raw_path(
                t,
                {
                    "algorithm": "dpo",
                    "model": {"name": "builtin:tiny-arith"},
                    "data": {"train": [{"source": "world"}]},
                    "trainng": {},
                },
            )
        ),
        ['"trainng"', "training"],
    ),
    (
        "wrong-type",
        lambda t: _args(_recipe(t, training={"learning_rate": "fast"})),
        ["training.learning_rate", "wrong type"],
    ),
    ("beta<=0", lambda t: _args(_recipe(t, loss={"beta": 0})), ["loss.beta", "greater than 0"]),
    (
        "label-smoothing>=0.5",
        lambda t: _args(_recipe(t, loss={"label_smoothing": 0.5})),
        ["loss.label_smoothing", "less than 0.5"],
    ),
    (
        "lr<=0",
        lambda t: _args(_recipe(t, training={"learning_rate": -1e-5})),
        ["training.learning_rate", "> 0"],
    ),
    (
        "negative-kto-weight",
        lambda t: _args(_recipe(t, algorithm="kto", loss={"desirable_weight": -1})),
        ["loss.desirable_weight"],
    ),
    (
        "unknown-algorithm",
        lambda t: _args(_recipe(t, algorithm="dpo2")),
        ['unknown algorithm "dpo2"', "Did you mean"],
    ),
    (
        "simpo-absolute-gamma",
        lambda t: _args(_recipe(t, algorithm="simpo", loss={"gamma": 1.6})),
        ["loss.gamma", "gamma_beta_ratio"],
    ),
    (
        "trl-knob-in-training",
        lambda t: _args(_recipe(t, training={"beta": 0.1})),
        ["training.beta", "loss.beta"],
    ),
    ("padding-free-dpo", lambda t: _args(_recipe(t, training={"padding_free": True})), ["padding_free"]),
    (
        "qlora-without-lora",
        lambda t: _args(
            _recipe(t, model={"name": "builtin:tiny-arith", "quantization": {"load_in_4bit": True}})
        ),
        ["model.quantization", "lora"],
    ),
    (
        "prompt>=max_length",
        lambda t: _args(_recipe(t, training={"max_length": 32, "max_prompt_length": 32})),
        ["max_prompt_length", "max_length"],
    ),
    (
        "global-batch-impossible",
        lambda t: _args(_recipe(t, training={"per_device_train_batch_size": 3, "global_batch_size": 8})),
        ["global_batch_size", "per_device_train_batch_size"],
    ),
    ("bad-override", lambda t: [*_args(_recipe(t)), "--set", "loss.beta"], ["--set", "section.key=value"]),
    (
        "unknown-source",
        lambda t: _args(_recipe(t, data={"train": [{"source": "ultrafeedback"}]})),
        ['"ultrafeedback"', "Did you mean"],
    ),
    (
        "unknown-source-option",
        lambda t: _args(_recipe(t, data={"train": [{"source": "world", "tsk": "arith"}]})),
        ['"tsk"'],
    ),
    (
        "unknown-world-task",
        lambda t: _args(_recipe(t, data={"train": [{"source": "world", "task": "arithmetic"}]})),
        ['"arithmetic"', "arith"],
    ),
    (
        "missing-data-file",
        lambda t: _args(_recipe(t, data={"train": [{"source": "jsonl", "path": "missing.jsonl"}]})),
        ["missing.jsonl"],
    ),
    ("empty-dataset", lambda t: _args(_recipe(t, [])), ["data.jsonl"]),
    ("missing-columns", lambda t: _args(_recipe(t, [{"prompt": "a", "chosen": "b"}] * 3)), ["rejected"]),
    (
        "non-string-content",
        lambda t: _args(_recipe(t, [{"prompt": "a", "chosen": 5, "rejected": "c"}] * 3)),
        ["data.jsonl"],
    ),
    (
        "empty-completion",
        lambda t: _args(_recipe(t, [{"prompt": "a", "chosen": "", "rejected": "c"}] * 3)),
        ["data.jsonl"],
    ),
    (
        "chosen==rejected",
        lambda t: _args(_recipe(t, [{"prompt": "a", "chosen": "b", "rejected": "b"}] * 3)),
        ["data.jsonl"],
    ),
    (
        "unpaired-to-dpo",
        lambda t: _args(
            _recipe(
                t,
                [
                    {"prompt": "a", "completion": "b", "label": True},
                    {"prompt": "a", "completion": "c", "label": False},
                ],
            )
        ),
        ["transform", "pair"],
    ),
    ("paired-to-kto", lambda t: _args(_recipe(t, algorithm="kto")), ["transform", "unpair"]),
    (
        "all-truncated",
        lambda t: _args(
            _recipe(
                t, [{"prompt": "x" * 80, "chosen": "b", "rejected": "c"}] * 3, training={"max_length": 16}
            )
        ),
        ["max_length"],
    ),
    (
        "strict-drop",
        lambda t: _args(
            _recipe(
                t, [PAIR, PAIR, {"prompt": "a", "chosen": "b", "rejected": "b"}], data_extra={"strict": True}
            )
        ),
        ["strict", "identical"],
    ),
    (
        "no-chat-template",
        lambda t: _args(
            _recipe(
                t, [CHAT] * 3, model={"name": "builtin:tiny-arith", "tokenizer": _no_template_tokenizer(t)}
            )
        ),
        ["chat template"],
    ),
    (
        "offline-hub-model",
        lambda t: _args(_recipe(t, model={"name": "no-such-org/no-such-model-xyz"})),
        ["no-such-org/no-such-model-xyz", "cache"],
    ),
    (
        "offline-hub-dataset",
        lambda t: _args(
            _recipe(
                t, data={"train": [{"source": "ultrafeedback_h4", "path": "no-such-org/no-such-dataset-xyz"}]}
            )
        ),
        ["no-such-org/no-such-dataset-xyz"],
    ),
    ("finished-run", lambda t: _finished(t), ["already holds a finished run", "--overwrite"]),
]


def _raw(tmp: Path, text: str) -> list[str]:
    p = tmp / "recipe.yaml"
    p.write_text(text)
    return ["train", "--config", str(p)]


def _raw_path(tmp: Path, data: dict) -> Path:
    p = tmp / "recipe.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _args(path: Path) -> list[str]:
    return ["train", "--config", str(path), "--output-dir", str(path.parent / "run")]


def _finished(tmp: Path) -> list[str]:
    path = _recipe(tmp)
    run = tmp / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"status": "finished"}))
    return _args(path)


def test_battery_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize(("case", "build", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_clear_message(case, build, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    argv = build(tmp_path)
    code = cli.main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("prefopt: error:")]
    assert len(lines) == 1, err  # one paragraph
    for part in expected:
        assert part in err, f"{part!r} not in: {err}"
    if "--config" in argv and case != "bad-override":
        assert argv[argv.index("--config") + 1] in err, err  # the recipe file is named


def test_debug_shows_the_traceback(tmp_path):
    from prefopt.core.errors import PrefoptError

    path = _recipe(tmp_path, training={"learnig_rate": 1e-5})
    with pytest.raises(PrefoptError):
        cli.main(["--debug", "train", "--config", str(path)])


def test_tokenizer_without_pad_token_is_handled(tmp_path):
    from prefopt.model.loading import load_tokenizer

    tok = load_tokenizer("builtin:tiny-arith")
    tok.pad_token = None
    d = tmp_path / "nopad"
    tok.save_pretrained(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    again = load_tokenizer(str(d))
    assert again.pad_token == again.eos_token
