"""Recipe validation: bad recipes fail before any model is loaded, naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prefopt import cli
from prefopt.config.recipe import load_recipe, parse_override
from prefopt.core.errors import PrefoptError
from prefopt.training.plan import dry_run, resolve_batch

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = sorted((REPO / "configs" / "recipes" / "quickstart").glob("*.yaml"))

BASE = {
    "algorithm": "dpo",
    "model": {"name": "builtin:tiny-arith"},
    "data": {"train": [{"source": "world", "task": "arith", "size": 64}]},
    "loss": {"beta": 0.1},
    "training": {"learning_rate": 1e-4, "max_length": 32},
}


def write(tmp_path: Path, data: dict, name: str = "recipe.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything tries to load a model."""
    import prefopt.model.loading as models

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the recipe was validated")

    monkeypatch.setattr(models, "load_model", boom)
    monkeypatch.setattr(models, "build_builtin", boom)


@pytest.mark.parametrize("path", QUICKSTART, ids=lambda p: p.stem)
def test_quickstart_recipes_validate(path):
    r = load_recipe(path)
    assert r.algorithm == path.stem
    assert r.source_path == path.resolve()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["training"].update(learnig_rate=1e-5),
            ["training.learnig_rate", 'Did you mean "learning_rate"'],
        ),
        (lambda d: d["model"].update(nmae="x"), ["model.nmae", 'Did you mean "name"']),
        (lambda d: d.update(trainig={}), ['unknown key "trainig"', 'Did you mean "training"']),
        (lambda d: d["loss"].update(bta=0.2), ["loss.bta", 'Did you mean "beta"']),
        (lambda d: d.update(algorithm="dpoo"), ['unknown algorithm "dpoo"', 'Did you mean "dpo"']),
        (lambda d: d["training"].update(learning_rate="fast"), ["training.learning_rate", "wrong type"]),
        (lambda d: d["loss"].update(beta="high"), ["loss.beta"]),
        (lambda d: d["loss"].update(beta=-1), ["loss.beta", "greater than 0"]),
        (lambda d: d["loss"].update(label_smoothing=0.5), ["loss.label_smoothing", "less than 0.5"]),
        (lambda d: d["training"].update(learning_rate=0), ["training.learning_rate", "must be > 0"]),
        (lambda d: d["training"].update(max_prompt_length=64), ["max_prompt_length", "max_length"]),
        (
            lambda d: d["model"].update(lora={"r": 8, "alpa": 16}),
            ["model.lora.alpa", 'Did you mean "lora_alpha"'],
        ),
        (lambda d: d["model"].update(quantization={"load_in_4bit": True}), ["model.quantization", "lora"]),
    ],
    ids=[
        "train-key",
        "model-key",
        "section",
        "loss-key",
        "algorithm",
        "train-type",
        "loss-type",
        "beta<=0",
        "ls>=0.5",
        "lr<=0",
        "prompt>=max",
        "lora-key",
        "qlora-needs-lora",
    ],
)
def test_bad_recipes_fail_before_model_loading(tmp_path, no_model_loading, mutate, expected):
    import copy

    data = copy.deepcopy(BASE)
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(PrefoptError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert str(path) in msg
    for part in expected:
        assert part in msg, msg


def test_cli_exits_2_without_traceback(tmp_path, capsys, no_model_loading):
    data = dict(BASE, training={"learnig_rate": 1e-5})
    path = write(tmp_path, data)
    code = cli.main(["train", "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert str(path) in err and "learnig_rate" in err


def test_yaml_syntax_error_reports_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("algorithm: dpo\nmodel:\n  name: [unclosed\n")
    with pytest.raises(PrefoptError, match=r"line \d+"):
        load_recipe(p)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(PrefoptError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path, BASE)
    r = load_recipe(
        path,
        [
            "loss.beta=0.25",
            "training.learning_rate=1e-6",
            "training.num_train_epochs=2",
            "loss.label_smoothing=0.1",
        ],
    )
    assert r.loss_params.beta == 0.25 and r.loss_params.label_smoothing == 0.1
    assert r.training["learning_rate"] == 1e-6 and isinstance(r.training["num_train_epochs"], int)
    assert parse_override("model.lora.target_modules=[q_proj, v_proj]") == (
        ["model", "lora", "target_modules"],
        ["q_proj", "v_proj"],
    )
    with pytest.raises(PrefoptError, match="loss.bta"):
        load_recipe(path, ["loss.bta=1"])


def test_recipe_relative_paths_resolve_against_the_recipe(tmp_path):
    sub = tmp_path / "recipes"
    sub.mkdir()
    path = write(sub, BASE)
    r = load_recipe(path)
    assert r.resolve_path("data/x.jsonl") == str((sub / "data" / "x.jsonl").resolve())
    assert r.resolve_path("/abs/x.jsonl") == "/abs/x.jsonl"


@pytest.mark.parametrize(
    ("algorithm", "loss", "expected"),
    [
        (
            "dpo",
            {"beta": 0.2, "label_smoothing": 0.1},
            {"loss_type": ["sigmoid"], "beta": 0.2, "label_smoothing": 0.1},
        ),
        ("ipo", {"tau": 0.05}, {"loss_type": ["ipo"], "beta": 0.05}),
        (
            "kto",
            {"beta": 0.1, "desirable_weight": 1.2},
            {"loss_type": "kto", "beta": 0.1, "desirable_weight": 1.2, "undesirable_weight": 1.0},
        ),
        ("orpo", {"lam": 0.25}, {"beta": 0.25}),
        (
            "simpo",
            {"beta": 2.5, "gamma_beta_ratio": 0.55},
            {"loss_type": "simpo", "beta": 2.5, "cpo_alpha": 0.0, "simpo_gamma": 2.5 * 0.55},
        ),
    ],
)
def test_dry_run_shows_what_trl_receives(algorithm, loss, expected):
    data = dict(
        BASE,
        algorithm=algorithm,
        loss=loss,
        training={"per_device_train_batch_size": 4, "global_batch_size": 32},
    )
    r = load_recipe(data=data)
    out = dry_run(r, n_processes=2)
    for k, v in expected.items():
        assert out["loss"][k] == pytest.approx(v) if isinstance(v, float) else out["loss"][k] == v
        assert out["trl_config"][k] == pytest.approx(v) if isinstance(v, float) else out["trl_config"][k] == v
    assert out["trl_config"]["gradient_accumulation_steps"] == 4
    assert out["global_batch_size"] == 32
    assert out["trainer"].startswith("prefopt.training.trainers.Prefopt")


def test_global_batch_refuses_impossible_combinations():
    r = load_recipe(data=dict(BASE, training={"per_device_train_batch_size": 3, "global_batch_size": 128}))
    with pytest.raises(PrefoptError, match="cannot be reached"):
        resolve_batch(r, n_processes=8)
    r = load_recipe(
        data=dict(
            BASE,
            training={
                "per_device_train_batch_size": 2,
                "global_batch_size": 128,
                "gradient_accumulation_steps": 4,
            },
        )
    )
    with pytest.raises(PrefoptError, match="contradicts"):
        resolve_batch(r, n_processes=4)
    assert (
        resolve_batch(
            r.model_copy(update={"training": {"per_device_train_batch_size": 2, "global_batch_size": 128}}),
            n_processes=4,
        )["gradient_accumulation_steps"]
        == 16
    )
