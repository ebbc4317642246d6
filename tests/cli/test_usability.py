"""Usability as a newcomer meets it (issue 20): trackers checked at recipe load, a demo that runs from a
wheel, no warning of prefopt's making, both KL figures labelled, ``prefopt eval`` reading the data a run
trained on, drop examples naming the input file and line."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml

from prefopt.config.recipe import load_recipe
from prefopt.core.errors import PrefoptError

cli = importlib.import_module("prefopt.cli.main")  # the module (prefopt.cli.main is also the function's name)

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "recipes" / "quickstart"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO)}  # this checkout, not an installed prefopt  # fmt: skip


# ------------------------------------------------------------------------------ 2. report_to integrations
def _missing(monkeypatch, *modules: str) -> None:
    """Make ``modules`` look uninstalled to importlib.util.find_spec (whatever this machine has)."""
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        return None if name.split(".")[0] in modules else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_report_to_without_its_package_exits_2_at_recipe_load(monkeypatch, tmp_path, capsys):
    _missing(monkeypatch, "tensorboard", "tensorboardX")
    run = tmp_path / "run"
    code = cli.main(
        ["train", "--config", str(QUICKSTART / "dpo.yaml"), "--set", "training.report_to=tensorboard",
         "--output-dir", str(run)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "training.report_to" in err and "tensorboard" in err and "pip install 'prefopt[tracking]'" in err
    assert not run.exists()  # refused before the run directory, the data or the model


@pytest.mark.parametrize(
    ("value", "missing", "message"),
    [
        (["trackio", "wandb"], ("wandb",), "pip install wandb"),
        ("trackio", ("trackio",), "pip install 'prefopt[tracking]'"),
        ("tensorbord", (), 'Did you mean "tensorboard"'),
    ],
)
def test_report_to_checks_every_listed_tracker(monkeypatch, value, missing, message):
    from prefopt.config.integrations import check_report_to

    monkeypatch.setattr("prefopt.config.integrations._available", lambda m: m.split(".")[0] not in missing)
    with pytest.raises(PrefoptError, match=re.escape(message)):
        check_report_to({"report_to": value}, "r.yaml")


def test_report_to_none_all_and_installed_trackers_pass(monkeypatch):
    from prefopt.config.integrations import check_report_to

    for value in (None, "none", "all", ["none"]):
        check_report_to({"report_to": value}, "r.yaml")
    monkeypatch.setattr("prefopt.config.integrations._available", lambda m: True)
    check_report_to({"report_to": ["tensorboard", "trackio", "wandb"]}, "r.yaml")


def test_tracking_extra_and_make_setup():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["optional-dependencies"]["tracking"] == ["tensorboard", "trackio"]
    assert 'pip install -q -e ".[test,tracking]"' in (REPO / "Makefile").read_text()


# ------------------------------------------------------------------------------ 3. the demo from a wheel
def test_packaged_demo_recipe_is_the_quickstart():
    """`prefopt demo` reads the recipe shipped in the package; configs/ is the copy users read and edit.
    They must stay byte-identical (edit both)."""
    assert cli.DEMO_RECIPE.read_bytes() == (QUICKSTART / "dpo.yaml").read_bytes()
    assert REPO / "prefopt" in cli.DEMO_RECIPE.parents


def test_demo_max_steps_must_be_positive(capsys):
    assert cli.main(["demo", "--max-steps", "0"]) == 2
    assert "--max-steps 0 must be 1 or more" in capsys.readouterr().err


@pytest.mark.slow
def test_wheel_installed_outside_the_repository_runs_the_demo(tmp_path):
    """Build the wheel (offline, no build isolation), install it with --target outside the repository and
    run its `prefopt` script from another folder: the demo needs nothing from the repository."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "prefopt", src / "prefopt", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist, site = tmp_path / "dist", tmp_path / "site"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
        check=True,
        env=ENV,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("prefopt-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "prefopt/recipes/quickstart/dpo.yaml" in names and not any(n.startswith("configs/") for n in names)
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**ENV, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import importlib; c = importlib.import_module('prefopt.cli.main'); print(c.__file__); print(c.DEMO_RECIPE)"],
        env=env, cwd=elsewhere, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(p.startswith(str(site)) for p in where), where  # the wheel's copy, not the repository's
    out = subprocess.run(
        [str(site / "bin" / "prefopt"), "demo", "--max-steps", "2", "--output-dir", "demo-run"],
        env=env, cwd=elsewhere, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads((elsewhere / "demo-run" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["global_step"] == 2
    assert "KL(policy ‖ reference), nats:" in out.stdout


# ------------------------------------------------------------------------------ 5. no warning of prefopt's making
def test_trl_config_uses_the_current_checkpointing_name():
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing; the old name warns
    (FutureWarning) on every run. prefopt passes the current one, also for a training: key spelt the
    old way, and sets pinned memory only where there is an accelerator (torch warns otherwise)."""
    import torch

    from prefopt.training.algorithms import get_adapter

    for algorithm in ("dpo", "ipo", "kto", "orpo", "simpo"):
        for overrides, expected in (
            ([], False),
            (["model.gradient_checkpointing=true"], True),
            (["training.gradient_checkpointing=true"], True),
        ):
            weights = (
                ["loss.desirable_weight=1.0", "loss.undesirable_weight=1.0"] if algorithm == "kto" else []
            )
            recipe = load_recipe(QUICKSTART / f"{algorithm}.yaml", overrides + weights)
            with warnings.catch_warnings():
                warnings.simplefilter("error", FutureWarning)
                config = get_adapter(algorithm).trl_config(recipe, output_dir="/tmp/prefopt-unused")
            assert config.activation_checkpointing is expected
            assert config.dataloader_pin_memory is torch.cuda.is_available()


ALLOWED_WARNINGS = [
    # (category, message start, the file whose code triggers it): not prefopt's making
    (
        "FutureWarning",
        "`is_gradient_checkpointing` is deprecated",
        "trl/models/utils.py",  # TRL 1.16's disable_gradient_checkpointing() reads the old property
    ),
]

RECORDER = """
import json, sys, traceback, warnings
records = []
def show(message, category, filename, lineno, file=None, line=None):
    stack = [f.filename for f in traceback.extract_stack()]
    at = max((i for i, f in enumerate(stack) if f == filename), default=0)  # where the warning points
    records.append({"category": category.__name__, "message": str(message), "filename": filename,
                    "caller": stack[at - 1] if at else ""})  # the code that called it
warnings.showwarning = show
warnings.simplefilter("always")
from prefopt.cli import main
rcs = [main(argv) for argv in json.loads(sys.argv[2])]
loaded = sorted(m for m, mod in sys.modules.items() if m.startswith("bitsandbytes") and mod is not None)
json.dump({"rcs": rcs, "records": records, "bitsandbytes": loaded}, open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_quickstarts_and_demo_print_no_warning_of_prefopts_making(tmp_path):
    """`make demo` (DPO) and the KTO and SimPO (trl.experimental) quickstarts, a couple of steps each, in a fresh process with every
    warning recorded (`always`): none but the listed third-party ones; bitsandbytes is never imported
    (no recipe quantizes); stderr holds no deprecation or bitsandbytes line; and the one run's two KL
    figures are labelled with their sample sets, the same way in the summary, eval.json and report.md."""
    script, result = tmp_path / "record.py", tmp_path / "result.json"
    script.write_text(RECORDER)
    quick = ["--set", "evaluation.world_prompts=24", "--set", "evaluation.max_prompts=12"]
    runs = [
        ["demo", "--max-steps", "2", "--output-dir", str(tmp_path / "demo"), *quick],
        *(["train", "--config", str(QUICKSTART / f"{a}.yaml"), "--set", "training.max_steps=2",
           "--output-dir", str(tmp_path / a), *quick] for a in ("kto", "simpo")),
    ]  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(script), str(result), json.dumps(runs)],
        env=ENV, cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(result.read_text())
    assert got["rcs"] == [0, 0, 0]
    assert got["bitsandbytes"] == []
    unexpected = [
        r
        for r in got["records"]
        if not any(
            r["category"] == cat and r["message"].startswith(msg) and r["caller"].endswith(caller)
            for cat, msg, caller in ALLOWED_WARNINGS
        )
    ]
    assert unexpected == []
    for line in out.stderr.splitlines():
        low = line.lower()
        assert "bitsandbytes" not in low and "pin_memory" not in low, line
        assert "deprecated" not in low or any(m in line for _, m, _ in ALLOWED_WARNINGS), line

    # item 6: one definition per figure, each labelled with its samples, identical everywhere
    ev = json.loads((tmp_path / "demo" / "eval.json").read_text())
    from prefopt.evaluate.metrics import kl_figures

    figures = kl_figures(ev)
    assert [f["key"] for f in figures] == ["kl_to_reference", "kl_to_reference_world"]
    assert ev["sampling"]["kl_samples"] == figures[0]["samples"]
    assert ev["world"]["kl_samples"] == figures[1]["samples"]
    assert ev["summary"]["kl_to_reference_world"] == ev["world"]["policy"]["kl_to_reference"]
    report = (tmp_path / "demo" / "report.md").read_text()
    for f in figures:
        assert f"{f['value']:.3f} on {f['samples']}" in out.stdout
        assert f"KL(policy ‖ reference), nats, on {f['samples']}" in report


# ------------------------------------------------------------------------------ 6. KL labels (unit)
def _eval_result() -> dict:
    return {
        "sampling": {"num_prompts": 200, "samples_per_prompt": 1, "temperature": 1.0, "max_new_tokens": 64,
                     "kl_to_reference": 0.827, "prompts_from": "held-out"},
        "world": {"policy": {"task": "arith", "num_prompts": 300, "samples_per_prompt": 4,
                             "kl_to_reference": 0.568, "reward_sampled": 0.7, "reward_greedy": 0.9},
                  "reference": {"task": "arith", "reward_sampled": 0.5, "reward_greedy": 0.9},
                  "lift_sampled": 0.2, "lift_greedy": 0.0},
    }  # fmt: skip


def test_both_kl_figures_are_labelled_with_their_sample_sets(capsys):
    from prefopt.evaluate.metrics import format_summary, kl_figures, summary_of
    from prefopt.evaluate.report import _eval_section

    ev = _eval_result()
    figures = kl_figures(ev)
    assert [(f["key"], f["value"]) for f in figures] == [
        ("kl_to_reference", 0.827),
        ("kl_to_reference_world", 0.568),
    ]
    assert figures[0]["samples"] == "200 held-out prompts × 1 sample at T=1, ≤ 64 new tokens"
    assert figures[1]["samples"] == "the true-reward samples: 300 world:arith test prompts × 4 at T=1"
    ev["summary"] = summary_of(ev)
    text = format_summary(ev)
    report = "\n".join(_eval_section(ev))
    cli._print_kl(ev)
    printed = capsys.readouterr().out
    for f in figures:
        assert f"(on {f['samples']})" in text
        assert f"KL(policy ‖ reference), nats, on {f['samples']} | {f['value']:.4g}" in report
        assert f"{f['value']:.3f} on {f['samples']}" in printed
    assert "KL(policy ‖ reference) on samples" not in report + printed  # the old, unlabelled figure


# ------------------------------------------------------------------------------ 7. eval from another cwd
def _pairs(path: Path, offset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + offset)}
        for a in range(1, 7)
        for b in range(1, 7)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


RECIPE = """\
algorithm: dpo
seed: 0
model: {name: "builtin:tiny-arith"}
data:
  train: [{source: jsonl, path: data/pairs.jsonl}]
  eval_fraction: 0.25
loss: {beta: 0.1}
training: {max_steps: 1, per_device_train_batch_size: 4, max_length: 32, logging_steps: 1, save_strategy: "no"}
evaluation: {max_prompts: 4, max_new_tokens: 4}
"""


@pytest.fixture(scope="module")
def relative_path_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcwd")
    project = root / "project"
    _pairs(project / "data" / "pairs.jsonl", offset=1)
    (project / "recipe.yaml").write_text(RECIPE)
    run = root / "run"
    assert cli.main(["train", "--config", str(project / "recipe.yaml"), "--output-dir", str(run)]) == 0
    other = root / "other"
    _pairs(other / "data" / "pairs.jsonl", offset=2)  # same relative path, other rows
    return project, run, other


def test_eval_from_another_directory_reads_the_training_data(relative_path_run, monkeypatch):
    from prefopt.evaluate.metrics import evaluate_run

    project, run, other = relative_path_run
    resolved = yaml.safe_load((run / "resolved.yaml").read_text())
    assert resolved["data"]["train"][0]["path"] == str((project / "data" / "pairs.jsonl").resolve())
    at_training = json.loads((run / "eval.json").read_text())["preference"]
    monkeypatch.chdir(other)
    again = evaluate_run(run, world_prompts=8)["preference"]
    for key in ("num_pairs", "accuracy", "reward_margin", "logp_shift_chosen"):
        assert again[key] == pytest.approx(at_training[key], abs=1e-5), key


def test_eval_of_an_old_run_with_relative_paths_refuses_other_files(relative_path_run, monkeypatch, capsys):
    """Runs written before paths were recorded absolute keep the recipe's relative path: from a folder
    where it names other rows, the data fingerprint differs from the manifest's and eval exits 2 (it
    used to evaluate them silently and overwrite eval.json); from the recipe's folder it works."""
    project, run, other = relative_path_run
    old = tmp = run.parent / "old-run"
    shutil.copytree(run, tmp)
    resolved = yaml.safe_load((old / "resolved.yaml").read_text())
    resolved["data"]["train"][0]["path"] = "data/pairs.jsonl"
    (old / "resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    before = (old / "eval.json").read_text()
    monkeypatch.chdir(other)
    assert cli.main(["eval", "--run", str(old)]) == 2
    err = capsys.readouterr().err
    assert "is not what this run trained on" in err and "data fingerprint" in err and "--data" in err
    assert (old / "eval.json").read_text() == before
    monkeypatch.chdir(project)
    assert cli.main(["eval", "--run", str(old)]) == 0


# ------------------------------------------------------------------------------ 8. drop examples: file and line
def test_drop_examples_name_the_input_file_and_line(tmp_path):
    """Examples of every step (read, dedupe, min_score_margin, after unpair) name the input file and the
    line their row starts on — not "row 102 of dedupe" — in the summary, the JSON and strict mode."""
    from prefopt.config.recipe import DataSection, SourceSection
    from prefopt.data.transforms import prepare

    lines = [
        {"prompt": "a", "chosen": "1", "rejected": "2", "score_chosen": 5, "score_rejected": 1},  # line 1
        {"prompt": "b", "chosen": "", "rejected": "2", "score_chosen": 5, "score_rejected": 1},  # 2: empty
        None,  # line 3 blank (skipped by the reader)
        {"prompt": "c", "chosen": "1", "rejected": "2", "score_chosen": 5, "score_rejected": 1},  # line 4
        {
            "prompt": "a",
            "chosen": "1",
            "rejected": "2",
            "score_chosen": 5,
            "score_rejected": 1,
        },  # 5: dup of 1
        {
            "prompt": "d",
            "chosen": "1",
            "rejected": "2",
            "score_chosen": 2,
            "score_rejected": 1.5,
        },  # 6: margin
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join((json.dumps(r) if r else "   ") + "\n" for r in lines))
    data = DataSection(
        train=[SourceSection(source="jsonl", path=str(path))],
        dedupe=True,
        min_score_margin=1.0,
        transform="unpair",
        shuffle=False,
    )
    _, _, report = prepare(data.train, None, data, "kto", None, 0)
    text = report.summary()
    assert "(mine.jsonl line 2)" in text  # empty_reply, at read
    assert "(mine.jsonl line 5)" in text  # duplicate, at dedupe (its index there is 2)
    assert "(mine.jsonl line 6)" in text  # below_score_margin, after dedupe shifted the rows
    assert " of dedupe" not in text and " of min_score_margin" not in text
    ex = report.as_dict()["drop_examples"]
    assert ex["duplicate"] == [{"index": 2, "step": "dedupe", "input": str(path), "row": 3, "line": 5}]
    with pytest.raises(PrefoptError, match=r"mine\.jsonl line 6: 2 - 1\.5 < 1"):
        report.check_strict("strict")


def test_drop_examples_in_a_json_array_name_the_line_the_row_starts_on(tmp_path):
    from prefopt.data.registry import get_source
    from prefopt.data.report import DropReport

    rows = [{"question": "q", "response_j": "a", "response_k": "b"}] * 2
    rows.insert(1, {"question": "q2", "response_j": "", "response_k": "b"})
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(rows, indent=2))
    report = DropReport()
    get_source("stack_exchange")({"path": str(path)}, base_dir=None, seed=0, report=report)
    starts = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if line == "  {"]
    assert report.examples["empty_reply"][0]["line"] == starts[1]
    assert f"pretty.json line {starts[1]}" in report.summary()


def test_drop_examples_of_inputs_without_lines_name_the_row(tmp_path):
    import datasets

    from prefopt.data.registry import get_source
    from prefopt.data.report import DropReport

    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_list(
        [{"prompt": "a", "chosen": "1", "rejected": "2"}, {"prompt": "b", "chosen": "1", "rejected": "1"}]
    ).to_parquet(str(path))
    report = DropReport()
    get_source("parquet")({"path": str(path)}, base_dir=None, seed=0, report=report)
    assert "row 1 of rows.parquet" in report.summary()


def test_readme_and_docs_commands_still_parse():
    """The commands this issue changed, as the docs show them, parse (no --source needed any more)."""
    parser = cli.build_parser()
    for argv in (
        "data convert --input x.json --to paired --output o.jsonl",
        "data inspect pairs.jsonl",
        "demo --max-steps 3",
    ):
        parser.parse_args(argv.split())
    text = textwrap.dedent((REPO / "docs" / "data.md").read_text())
    assert "prefopt data convert [--source NAME]" in text
