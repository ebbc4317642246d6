"""The inputs and safety battery (issue 19, items 9–15): recipes, data files and model folders that
must end in exit 2 with one paragraph naming the file and the field or line — before any model loads —
plus the inputs that must be read correctly (every file of a folder, quoted strings kept, drops
counted). The harness and helpers are those of ``test_bad_input.py``."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
import yaml
from test_bad_input import PAIR, _args, _raw, _recipe

from prefopt import cli

ROWS = [{"prompt": f"{i}+{i}=", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(6)]
LINES = "".join(json.dumps(r) + "\n" for r in ROWS)


def _jsonl(rows=ROWS) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _data_case(tmp: Path, name: str, content: bytes | str, *, source="jsonl", **sections) -> list[str]:
    """A recipe training on the file (or folder) ``name`` in ``tmp`` written with ``content``."""
    f = tmp / name
    f.write_bytes(content.encode() if isinstance(content, str) else content)
    data = {"train": [{"source": source, "path": name}], **sections.pop("data_extra", {})}
    return _args(_recipe(tmp, data=data, **sections))


def _folder_case(tmp: Path, files: dict[str, bytes | str], **data_extra) -> list[str]:
    d = tmp / "folder"
    for name, content in files.items():
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return _args(_recipe(tmp, data={"train": [{"source": "jsonl", "path": "folder"}], **data_extra}))


def _yaml_case(tmp: Path, text: str) -> list[str]:
    argv = _raw(tmp, text)
    return [*argv, "--output-dir", str(tmp / "run")]


BASE_YAML = """\
algorithm: dpo
model:
  name: builtin:tiny-arith
data:
  train: [{source: world}]
"""


def _training_case(tmp: Path, **training) -> list[str]:
    return _args(_recipe(tmp, training=training))


def _yaml_training(tmp: Path, body: str) -> list[str]:
    """A recipe whose ``training:`` block is written verbatim (for YAML-only values like .nan)."""
    return _yaml_case(tmp, BASE_YAML + "training:\n" + body)


# ------------------------------------------------------------------------------------------ fixtures
def _parquet(rows, path: Path, row_group_size=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def _damaged_parquet(tmp: Path) -> list[str]:
    """Two row groups; the second one's page header overwritten (the footer still reads)."""
    import pyarrow.parquet as pq

    path = tmp / "data.parquet"
    rows = [{"prompt": f"p{i}", "chosen": "a" * 40, "rejected": "b" * 40} for i in range(8)]
    _parquet(rows, path, row_group_size=4)
    offset = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    raw = bytearray(path.read_bytes())
    raw[offset : offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    return _args(_recipe(tmp, data={"train": [{"source": "parquet", "path": "data.parquet"}]}))


def _tiny_config_dict() -> dict:
    from prefopt.model.loading import builtin_config

    return builtin_config("tiny-arith").to_dict()


def _model_dir(tmp: Path, weights: str | None, *, name="model") -> Path:
    """A checkpoint folder of the builtin model with its weights in the file ``weights`` (by suffix:
    safetensors, or a torch pickle), or none."""
    import torch
    from safetensors.torch import save_file

    from prefopt.model.loading import build_builtin

    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    cfg = _tiny_config_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    if weights:
        state = {k: v.contiguous() for k, v in build_builtin("tiny-arith", 0).state_dict().items()}
        state.pop("lm_head.weight", None)  # tied to the embedding
        if weights.endswith(".safetensors"):
            save_file(state, str(d / weights), metadata={"format": "pt"})
        else:
            torch.save(state, d / weights)
    return d


CUSTOM_CONFIG_PY = """\
from transformers import LlamaConfig


class PrefoptCustomConfig(LlamaConfig):
    model_type = "prefopt_custom_llama"
"""
CUSTOM_MODELING_PY = """\
from transformers import LlamaForCausalLM

from .configuration_prefopt_custom import PrefoptCustomConfig


class PrefoptCustomForCausalLM(LlamaForCausalLM):
    config_class = PrefoptCustomConfig
"""


def _custom_code_model(tmp: Path) -> Path:
    """A model_type transformers does not know, whose classes live in the checkpoint (auto_map)."""
    d = _model_dir(tmp, "model.safetensors", name="custom")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(
        model_type="prefopt_custom_llama",
        architectures=["PrefoptCustomForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_prefopt_custom.PrefoptCustomConfig",
            "AutoModelForCausalLM": "modeling_prefopt_custom.PrefoptCustomForCausalLM",
        },
    )
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "configuration_prefopt_custom.py").write_text(CUSTOM_CONFIG_PY)
    (d / "modeling_prefopt_custom.py").write_text(CUSTOM_MODELING_PY)
    return d


def _model_case(tmp: Path, model_dir: Path, **model) -> list[str]:
    return _args(_recipe(tmp, model={"name": str(model_dir), "tokenizer": "builtin:tiny-arith", **model}))


def _convert(tmp: Path, output: str, *, make=None) -> list[str]:
    (tmp / "in.jsonl").write_text(LINES)
    if make:
        make(tmp)
    return [
        "data",
        "convert",
        "--source",
        "jsonl",
        "--input",
        str(tmp / "in.jsonl"),
        "--to",
        "paired",
        "--output",
        str(tmp / output),
    ]


def _cwd_model_case(tmp: Path, monkeypatch) -> list[str]:
    """model.name "mymodel" is a folder of the working directory but not of the recipe's folder."""
    _model_dir(tmp, "model.safetensors", name="mymodel")
    sub = tmp / "recipes"
    sub.mkdir()
    (sub / "data.jsonl").write_text(LINES)
    monkeypatch.chdir(tmp)
    return _args(_recipe(sub, model={"name": "mymodel"}))


BOMB = "algorithm: dpo\nmodel: {name: builtin:tiny-arith}\n" + "".join(
    f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9) if i else ', '.join(['lol'] * 9)}]\n"
    for i in range(9)
)


# each case: (id, builder(tmp, monkeypatch) -> argv, substrings the message must hold, the file named)
CASES = [
    # ---- 9: duplicate keys --------------------------------------------------------------------
    (
        "dup-seed",
        lambda t, m: _yaml_case(t, BASE_YAML + "seed: 1\nloss: {beta: 0.1}\nseed: 2\n"),
        ['"seed"', "lines 6 and 8"],
        "recipe.yaml",
    ),
    (
        "dup-training-block",
        lambda t, m: _yaml_case(
            t,
            BASE_YAML
            + "training:\n  learning_rate: 2.0e-4\n  max_steps: 1\ntraining:\n  learning_rate: 1.0e-6\n",
        ),
        ['"training"', "lines 6 and 9"],
        "recipe.yaml",
    ),
    (
        "dup-nested-key",
        lambda t, m: _yaml_training(t, "  max_length: 32\n  max_steps: 1\n  max_length: 1024\n"),
        ['"max_length"', "lines 7 and 9"],
        "recipe.yaml",
    ),
    (
        "dup-in-flow-mapping",
        lambda t, m: _yaml_case(t, BASE_YAML + "loss: {beta: 0.1, beta: 0.5}\n"),
        ['"beta"', "lines 6 and 6"],
        "recipe.yaml",
    ),
    (
        "dup-in-set-override",
        lambda t, m: [*_args(_recipe(t)), "--set", "model.lora={r: 8, r: 16}"],
        ['"r"', "--set"],
        None,
    ),
    # ---- 10: alias bombs, self-reference, depth -------------------------------------------------
    ("alias-bomb", lambda t, m: _yaml_case(t, BOMB), ["aliases", "100,000"], "recipe.yaml"),
    (
        "alias-self-reference",
        lambda t, m: _yaml_case(t, BASE_YAML + "training: &t\n  x: *t\n"),
        ["alias to itself", "line 6"],
        "recipe.yaml",
    ),
    (
        "nested-too-deep",
        lambda t, m: _yaml_case(t, BASE_YAML + "training: {x: " + "[" * 3000 + "]" * 3000 + "}\n"),
        ["nested too deeply"],
        "recipe.yaml",
    ),
    (
        "two-documents",
        lambda t, m: _yaml_case(t, BASE_YAML + "---\nalgorithm: ipo\n"),
        ["YAML syntax error", "line 6"],
        "recipe.yaml",
    ),
    # ---- 11: values validation let through ------------------------------------------------------
    (
        "lr-nan",
        lambda t, m: _yaml_training(t, "  learning_rate: .nan\n  max_steps: 1\n"),
        ["training.learning_rate", "finite"],
        "recipe.yaml",
    ),
    (
        "lr-inf",
        lambda t, m: _yaml_training(t, "  learning_rate: .inf\n  max_steps: 1\n"),
        ["training.learning_rate", "finite"],
        "recipe.yaml",
    ),
    (
        "lr-nan-override",
        lambda t, m: [*_args(_recipe(t)), "--set", "training.learning_rate=.nan"],
        ["training.learning_rate", "finite"],
        "recipe.yaml",
    ),
    (
        "max-grad-norm-inf",
        lambda t, m: _yaml_training(t, "  max_grad_norm: -.inf\n  max_steps: 1\n"),
        ["training.max_grad_norm", "finite"],
        "recipe.yaml",
    ),
    (
        "epochs-0",
        lambda t, m: _args(_recipe(t, training={"num_train_epochs": 0, "max_steps": -1})),
        ["training.num_train_epochs", "> 0"],
        "recipe.yaml",
    ),
    (
        "epochs-negative",
        lambda t, m: _training_case(t, num_train_epochs=-2.0),
        ["training.num_train_epochs"],
        "recipe.yaml",
    ),
    ("max-steps-0", lambda t, m: _training_case(t, max_steps=0), ["training.max_steps", "-1"], "recipe.yaml"),
    (
        "max-steps-negative",
        lambda t, m: _training_case(t, max_steps=-5),
        ["training.max_steps", "-1"],
        "recipe.yaml",
    ),
    ("max-length-0", lambda t, m: _training_case(t, max_length=0), ["training.max_length"], "recipe.yaml"),
    (
        "max-prompt-length-negative",
        lambda t, m: _training_case(t, max_prompt_length=-8),
        ["training.max_prompt_length"],
        "recipe.yaml",
    ),
    (
        "beta-nan",
        lambda t, m: _yaml_case(t, BASE_YAML + "loss: {beta: .nan}\n"),
        ["loss.beta"],
        "recipe.yaml",
    ),
    (
        "beta-inf",
        lambda t, m: _yaml_case(t, BASE_YAML + "loss: {beta: .inf}\n"),
        ["loss.beta", "finite"],
        "recipe.yaml",
    ),
    (
        "eval-temperature-inf",
        lambda t, m: _yaml_case(t, BASE_YAML + "evaluation: {temperature: .inf}\n"),
        ["evaluation.temperature", "finite"],
        "recipe.yaml",
    ),
    (
        "revision-unquoted-number",
        lambda t, m: _yaml_case(
            t, BASE_YAML.replace("builtin:tiny-arith", "builtin:tiny-arith\n  revision: 1234e56")
        ),
        ["model.revision", "quote it"],
        "recipe.yaml",
    ),
    (
        "training-trust-remote-code",
        lambda t, m: _training_case(t, trust_remote_code=True),
        ["training.trust_remote_code", "model.trust_remote_code"],
        "recipe.yaml",
    ),
    # ---- 13: recipe files ------------------------------------------------------------------------
    (
        "recipe-is-directory",
        lambda t, m: ["train", "--config", str(t), "--output-dir", str(t / "run")],
        ["is a directory"],
        None,
    ),
    (
        "recipe-latin-1",
        lambda t, m: (
            (t / "recipe.yaml").write_bytes(BASE_YAML.encode() + b"# caf\xe9\n"),
            ["train", "--config", str(t / "recipe.yaml")],
        )[1],
        ["line 6, column 6", "UTF-8"],
        "recipe.yaml",
    ),
    # ---- 12/13: data files -----------------------------------------------------------------------
    (
        "all-lines-invalid-json",
        lambda t, m: _data_case(t, "data.jsonl", "{not json\n" * 5),
        ["data.jsonl", "none of the 5 rows", "line 1: invalid JSON"],
        "data.jsonl",
    ),
    (
        "gzip-cut-short",
        lambda t, m: _data_case(t, "data.jsonl.gz", gzip.compress((LINES * 40).encode())[:-40]),
        ["data.jsonl.gz", "cut short", "gzip -t"],
        "data.jsonl.gz",
    ),
    (
        "gz-name-on-plain-text",
        lambda t, m: _data_case(t, "data.jsonl.gz", LINES),
        ["data.jsonl.gz", "not gzip-compressed"],
        "data.jsonl.gz",
    ),
    (
        "damaged-parquet-row-group",
        lambda t, m: _damaged_parquet(t),
        ["row group 1", "rows 4–7"],
        "data.parquet",
    ),
    (
        "not-parquet",
        lambda t, m: _data_case(t, "data.parquet", LINES, source="parquet"),
        ["not a readable parquet file"],
        "data.parquet",
    ),
    (
        "json-array-not-utf8",
        lambda t, m: _data_case(
            t, "data.json", b'[\n{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n]'
        ),
        ["line 2, column 16", "not UTF-8"],
        "data.json",
    ),
    (
        "bad-utf8-first-line-strict",
        lambda t, m: _data_case(
            t, "data.jsonl", b'{"prompt": "caf\xe9"}\n' + LINES.encode(), data_extra={"strict": True}
        ),
        ["strict", "line 1: not UTF-8 (byte 0xe9) in data.jsonl"],
        "data.jsonl",
    ),
    (
        "folder-with-pickle",
        lambda t, m: _folder_case(t, {"a.jsonl": LINES, "b.jsonl": LINES, "d.pkl": b"\x80\x04K\x01."}),
        ["d.pkl", "would be ignored"],
        "folder",
    ),
    (
        "folder-file-in-no-split",
        lambda t, m: _folder_case(t, {"train.jsonl": LINES, "test.jsonl": LINES, "extra.jsonl": LINES}),
        ["extra.jsonl", "in no split"],
        "folder",
    ),
    (
        "folder-without-data",
        lambda t, m: _folder_case(t, {"README.md": "# nothing here\n"}),
        ["holds no data files"],
        "folder",
    ),
    (
        "folder-one-bad-line-strict",
        lambda t, m: _folder_case(t, {"a.jsonl": LINES, "b.jsonl": LINES + "{oops\n" + LINES}, strict=True),
        ["line 7: invalid JSON (Expecting property name enclosed in double quotes) in b.jsonl", "strict"],
        "b.jsonl",
    ),
    (
        "folder-cut-short-gzip",
        lambda t, m: _folder_case(
            t, {"a.jsonl": LINES, "b.jsonl.gz": gzip.compress((LINES * 40).encode())[:-40]}
        ),
        ["b.jsonl.gz", "cut short"],
        "b.jsonl.gz",
    ),
    (
        "csv-short-row-strict",
        lambda t, m: _data_case(
            t, "data.csv", "prompt,chosen,rejected\na,b,c\nd,e\n", data_extra={"strict": True}
        ),
        ["line 3: 2 fields, the header has 3 in data.csv"],
        "data.csv",
    ),
    # ---- 13: data convert --output ---------------------------------------------------------------
    (
        "convert-output-is-directory",
        lambda t, m: _convert(t, "outdir", make=lambda t: (t / "outdir").mkdir()),
        ["--output", "is a directory"],
        "outdir",
    ),
    (
        "convert-output-under-a-file",
        lambda t, m: _convert(t, "afile/out.jsonl", make=lambda t: (t / "afile").write_text("x")),
        ["--output", "regular file"],
        "afile",
    ),
    # ---- 13: relative model paths ----------------------------------------------------------------
    (
        "model-relative-missing",
        lambda t, m: _args(_recipe(t, model={"name": "./no-such-model"})),
        ["model.name", "recipe's folder", str(Path("no-such-model"))],
        "recipe.yaml",
    ),
    (
        "model-in-cwd-not-recipe-folder",
        _cwd_model_case,
        ["model.name", "working directory is not used", "recipes"],
        "recipe.yaml",
    ),
    (
        "tokenizer-relative-missing",
        lambda t, m: _args(_recipe(t, model={"name": "builtin:tiny-arith", "tokenizer": "../tok"})),
        ["model.tokenizer"],
        "recipe.yaml",
    ),
    # ---- 14: pickle weights ----------------------------------------------------------------------
    (
        "pickle-weights-bin",
        lambda t, m: _model_case(t, _model_dir(t, "pytorch_model.bin")),
        ["pytorch_model.bin", "pickle", "allow_pickle_weights"],
        "model",
    ),
    (
        "pickle-weights-pt",
        lambda t, m: _model_case(t, _model_dir(t, "weights.pt")),
        ["weights.pt", "allow_pickle_weights"],
        "model",
    ),
    (
        "pickle-weights-ckpt",
        lambda t, m: _model_case(t, _model_dir(t, "model.ckpt")),
        ["model.ckpt", "allow_pickle_weights"],
        "model",
    ),
    ("model-without-weights", lambda t, m: _model_case(t, _model_dir(t, None)), ["no weights"], "model"),
    # ---- 15: custom code -------------------------------------------------------------------------
    (
        "custom-code-untrusted",
        lambda t, m: _model_case(t, _custom_code_model(t)),
        ["custom-code model", "prefopt_custom_llama", "model.trust_remote_code: true"],
        "config.json",
    ),
]


def test_battery_has_at_least_35_cases():
    assert len(CASES) >= 35


@pytest.mark.parametrize(("case", "build", "expected", "file"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2(case, build, expected, file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    argv = build(tmp_path, monkeypatch)
    capsys.readouterr()
    t0 = time.perf_counter()
    code = cli.main(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("prefopt: error:")]
    assert len(lines) == 1, err  # one paragraph
    for part in expected:
        assert part in err, f"{part!r} not in: {err}"
    if file:
        assert file in err, f"{file} not named: {err}"
    if file in ("recipe.yaml", None):  # a recipe problem is refused at load, before the run dir exists
        assert not (tmp_path / "run").exists() and not (tmp_path / "recipes" / "run").exists()
    if case == "alias-bomb":
        assert seconds < 5, f"the alias bomb took {seconds:.1f}s"


NO_GPU = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")


@NO_GPU
@pytest.mark.parametrize("key", ["fp16", "bf16", "fp16_full_eval", "bf16_full_eval"])
def test_mixed_precision_without_the_device_exits_2_at_load(key, tmp_path, capsys):
    code = cli.main(_training_case(tmp_path, **{key: True}))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert f'"training.{key}" = true' in err and "recipe.yaml" in err and "Fix:" in err
    assert not (tmp_path / "run").exists()  # refused at recipe load, before the run directory


@NO_GPU
def test_smoke_still_runs_a_gpu_recipe_here(tmp_path, capsys):
    """--smoke drops fp16/bf16, so the device check does not refuse it (dry run: nothing trains)."""
    code = cli.main([*_training_case(tmp_path, bf16=True), "--smoke", "--dry-run"])
    assert code == 0, capsys.readouterr().err[-2000:]


# ------------------------------------------------------------------------ inputs read correctly
def _convert_folder(tmp: Path, files: dict[str, bytes | str], capsys) -> tuple[list[dict], dict, str]:
    d = tmp / "folder"
    for name, content in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(content.encode() if isinstance(content, str) else content)
    out, rep = tmp / "out.jsonl", tmp / "report.json"
    argv = ["data", "convert", "--source", "jsonl", "--input", str(d), "--to", "paired"]
    code = cli.main([*argv, "--output", str(out), "--report", str(rep)])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return rows, json.loads(rep.read_text()), err


def _rows(tag: str, n: int = 6) -> list[dict]:
    return [
        {"prompt": f"{tag}{i}?", "chosen": f"{tag} yes {i}", "rejected": f"{tag} no {i}"} for i in range(n)
    ]


def test_a_folder_reads_every_file_of_every_type(tmp_path, capsys):
    import io

    buf = io.BytesIO()
    _parquet(_rows("c"), buf)
    csv_text = "prompt,chosen,rejected\n" + "".join(
        f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in _rows("d")
    )
    files = {
        "a.jsonl": _jsonl(_rows("a")),
        "b.jsonl.gz": gzip.compress(_jsonl(_rows("b")).encode()),
        "c.parquet": buf.getvalue(),
        "d.csv": csv_text,
        "e.json": json.dumps(_rows("e")),
        "README.md": "# notes, not data\n",
    }
    rows, report, _ = _convert_folder(tmp_path, files, capsys)
    assert sorted({r["prompt"][0] for r in rows}) == ["a", "b", "c", "d", "e"]
    assert len(rows) == 30 and report["rows_in"] == 30 and report["rows_out"] == 30
    detail = report["steps"][0]["detail"]
    for name in ("a.jsonl", "b.jsonl.gz", "c.parquet", "d.csv", "e.json"):
        assert name in detail


def test_a_bad_line_in_a_folder_is_a_counted_drop_naming_file_and_line(tmp_path, capsys):
    files = {
        "a.jsonl": _jsonl(_rows("a")),
        "b.jsonl": _jsonl(_rows("b", 2)) + "{oops\n" + _jsonl(_rows("c", 2)),
    }
    rows, report, err = _convert_folder(tmp_path, files, capsys)
    assert len(rows) == 10 and report["drops"] == {"malformed_row": 1}
    (example,) = report["drop_examples"]["malformed_row"]
    assert "line 3" in example["detail"] and example["detail"].endswith("in b.jsonl")


def test_an_undecodable_byte_is_one_counted_drop_wherever_it_is(tmp_path, capsys):
    """The same byte on the first line (inside the first 8 KB that text-mode readers decode ahead) and
    on a line far past it: both are a malformed row with its line number; every other row is read."""
    bad = b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
    good = [json.dumps(r).encode() + b"\n" for r in _rows("g", 300)]
    for name, content, line in (
        ("first.jsonl", bad + b"".join(good), 1),
        ("late.jsonl", b"".join(good[:250]) + bad + b"".join(good[250:]), 251),
    ):
        assert len(b"".join(good[:250])) > 8192
        src = tmp_path / name
        src.write_bytes(content)
        out = tmp_path / f"{name}.out.jsonl"
        argv = ["data", "convert", "--source", "jsonl", "--input", str(src), "--to", "paired"]
        rep = tmp_path / f"{name}.report.json"
        code = cli.main([*argv, "--output", str(out), "--report", str(rep)])
        err = capsys.readouterr().err
        assert code == 0 and "Traceback" not in err, err
        report = json.loads(rep.read_text())
        assert report["rows_in"] == 301 and report["rows_out"] == 300
        (example,) = report["drop_examples"]["malformed_row"]
        assert example["detail"] == f"line {line}: not UTF-8 (byte 0xe9) in {name}"


def _load(tmp: Path, text: str, overrides=()):
    from prefopt.config.recipe import load_recipe

    p = tmp / "recipe.yaml"
    p.write_text(text)
    return load_recipe(p, list(overrides))


def test_quoted_values_stay_strings_and_plain_exponents_are_numbers(tmp_path):
    from prefopt.config.recipe import RecipeLoader, dump_resolved

    text = BASE_YAML.replace("builtin:tiny-arith", 'builtin:tiny-arith\n  revision: "1234e56"')
    r = _load(tmp_path, text + "training: {learning_rate: 1e-6, max_steps: 1}\n")
    assert r.model.revision == "1234e56"
    assert r.training["learning_rate"] == 1e-6 and isinstance(r.training["learning_rate"], float)
    # resolved.yaml reads back the same (the string is quoted on the way out)
    again = yaml.load(dump_resolved(r), Loader=RecipeLoader)
    assert again["model"]["revision"] == "1234e56"
    r = _load(tmp_path, BASE_YAML, ['model.revision="1234e56"', "training.learning_rate=5E-7"])
    assert r.model.revision == "1234e56" and r.training["learning_rate"] == 5e-7
    r = _load(tmp_path, BASE_YAML + "loss: {beta: '0.5'}\n")
    assert r.loss_params.beta == 0.5  # pydantic still reads a quoted number for a float field


def test_merge_keys_override_without_being_duplicates(tmp_path):
    r = _load(
        tmp_path,
        BASE_YAML
        + "loss: {<<: {beta: 0.3}, label_smoothing: 0.1}\n"
        + "health: {<<: {margin_stuck_steps: 5}, margin_stuck_steps: 7}\n",
    )
    assert r.loss_params.beta == 0.3 and r.loss_params.label_smoothing == 0.1
    assert r.health.margin_stuck_steps == 7  # an explicit key overrides the merged one, as YAML defines


def test_max_steps_minus_one_means_epochs_and_is_allowed(tmp_path):
    r = _load(tmp_path, BASE_YAML + "training: {max_steps: -1, num_train_epochs: 0.5}\n")
    assert r.training["max_steps"] == -1


def test_a_relative_model_path_resolves_against_the_recipe_folder(tmp_path, monkeypatch):
    sub = tmp_path / "recipes"
    d = _model_dir(sub, "model.safetensors", name="mymodel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = _load(sub, BASE_YAML.replace("builtin:tiny-arith", "mymodel\n  tokenizer: ./mymodel"))
    assert r.model.name == str(d.resolve()) and r.model.tokenizer == str(d.resolve())
    r = _load(sub, BASE_YAML.replace("builtin:tiny-arith", "org/hub-model"))
    assert r.model.name == "org/hub-model"  # not a path here: a hub id


def test_pickle_weights_load_only_when_the_recipe_opts_in(tmp_path):
    import torch

    from prefopt.config.recipe import ModelSection
    from prefopt.core.errors import PrefoptError
    from prefopt.model.loading import build_builtin, load_model, load_tokenizer

    d = _model_dir(tmp_path, "pytorch_model.bin")
    tok = load_tokenizer("builtin:tiny-arith")
    with pytest.raises(PrefoptError, match="allow_pickle_weights"):
        load_model(ModelSection(name=str(d)), seed=0, tokenizer=tok)
    model, _ = load_model(ModelSection(name=str(d), allow_pickle_weights=True), seed=0, tokenizer=tok)
    want = build_builtin("tiny-arith", 0).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    # safetensors beside a stray pickle: the safetensors are loaded, nothing is refused
    d2 = _model_dir(tmp_path, "model.safetensors", name="both")
    torch.save({"not": torch.zeros(1)}, d2 / "pytorch_model.bin")
    model, _ = load_model(ModelSection(name=str(d2)), seed=0, tokenizer=tok)
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())


def test_trl_config_carries_trust_remote_code_for_the_reference(tmp_path):
    from prefopt.training.algorithms import get_adapter

    d = _custom_code_model(tmp_path)
    r = _load(tmp_path, BASE_YAML.replace("builtin:tiny-arith", f"{d}\n  trust_remote_code: true"))
    config = get_adapter("dpo").trl_config(r, output_dir=str(tmp_path / "ckpt"))
    assert config.trust_remote_code is True


@pytest.mark.slow
def test_a_trusted_custom_code_model_trains_dpo_with_its_reference(tmp_path, capsys, monkeypatch):
    """TRL builds the DPO reference from the policy's path itself; it needs the flag too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = _custom_code_model(tmp_path)
    (tmp_path / "data.jsonl").write_text(_jsonl([PAIR] * 2 + ROWS[:2]))
    model = {"name": str(d), "tokenizer": "builtin:tiny-arith", "trust_remote_code": True}
    argv = _args(_recipe(tmp_path, model=model, output={"save_model": False}))
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["global_step"] == 1


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_fp16_and_bf16_are_accepted_where_the_device_supports_them(tmp_path):
    import torch

    r = _load(tmp_path, BASE_YAML + "training: {fp16: true}\n")
    assert r.training["fp16"] is True
    if torch.cuda.is_bf16_supported():
        assert _load(tmp_path, BASE_YAML + "training: {bf16: true}\n").training["bf16"] is True
