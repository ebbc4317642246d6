"""The paper recipes in configs/recipes/papers/: what TRL will receive (via the dry run, no model
loaded), the global batch arithmetic, the headers, and a few-step smoke run of each on the builtin model.

The expected values are the published ones (docs/recipes.md rows cited in each file's header); a failure
here means a recipe, an adapter or the batch logic no longer reproduces the paper's configuration.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pytest

from prefopt.config.recipe import load_recipe
from prefopt.core.errors import PrefoptError
from prefopt.training.plan import dry_run, resolve_batch

ROOT = Path(__file__).resolve().parents[2]
PAPERS = ROOT / "configs" / "recipes" / "papers"
ACCELERATE = ROOT / "configs" / "accelerate"

# recipe file → the launch it was published with (processes) and what TRL must receive.
# "batch": (per-device, gradient accumulation, global) on that many processes.
EXPECTED: dict[str, dict] = {
    "zephyr-7b-beta-dpo-full.yaml": {
        "processes": 8,
        "trainer": "PrefoptDPOTrainer",
        "config": "DPOConfig",
        "lr": 5e-7,
        "batch": (8, 2, 128),
        "loss": {"loss_type": ["sigmoid"], "beta": 0.01, "label_smoothing": 0.0},
    },
    "zephyr-7b-beta-dpo-qlora.yaml": {
        "processes": 1,
        "trainer": "PrefoptDPOTrainer",
        "config": "DPOConfig",
        "lr": 5e-6,
        "batch": (4, 4, 16),
        "loss": {"loss_type": ["sigmoid"], "beta": 0.01, "label_smoothing": 0.0},
    },
    "ipo-zephyr-pref-align-scan.yaml": {
        "processes": 8,
        "trainer": "PrefoptDPOTrainer",
        "config": "DPOConfig",
        "lr": 5e-7,
        "batch": (8, 2, 128),
        "loss": {"loss_type": ["ipo"], "beta": 0.01},  # TRL's beta is IPO's τ
    },
    "kto-zephyr-sft-halos.yaml": {
        "processes": 8,
        "trainer": "PrefoptKTOTrainer",
        "config": "KTOConfig",
        "lr": 5e-6,
        "batch": (4, 1, 32),
        "loss": {"loss_type": "kto", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    },
    "mistral-orpo-beta.yaml": {
        "processes": 4,
        "trainer": "PrefoptORPOTrainer",
        "config": "ORPOConfig",
        "lr": 5e-6,
        "batch": (8, 1, 32),
        "loss": {"beta": 0.1},  # TRL's beta is ORPO's λ
    },
}
# SimPO (docs/recipes.md §A2): β, γ/β, the absolute γ TRL must receive, learning rate; 2 × 16 × 4 GPUs = 128
SIMPO = {
    "simpo-mistral-7b-base.yaml": (2.0, 0.8, 1.6, 3e-7),
    "simpo-mistral-7b-instruct.yaml": (2.5, 0.1, 0.25, 5e-7),
    "simpo-llama-3-8b-base.yaml": (2.0, 0.5, 1.0, 6e-7),
    "simpo-llama-3-8b-instruct.yaml": (2.5, 0.55, 1.375, 1e-6),
    "simpo-llama-3-8b-instruct-v0.2.yaml": (10.0, 0.3, 3.0, 1e-6),
    "simpo-gemma-2-9b-it.yaml": (10.0, 0.5, 5.0, 8e-7),
}
for _name, (_beta, _ratio, _gamma, _lr) in SIMPO.items():
    EXPECTED[_name] = {
        "processes": 4,
        "trainer": "PrefoptCPOTrainer",
        "config": "CPOConfig",
        "lr": _lr,
        "batch": (2, 16, 128),
        "loss": {
            "loss_type": "simpo",
            "beta": _beta,
            "simpo_gamma": _gamma,
            "cpo_alpha": 0.0,
            "label_smoothing": 0.0,
        },
        "gamma_beta_ratio": _ratio,
    }

RECIPES = sorted(EXPECTED)


def recipe_path(name: str) -> Path:
    return PAPERS / name


def header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])


def test_every_paper_recipe_is_checked():
    assert sorted(p.name for p in PAPERS.glob("*.yaml")) == RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_header_cites_source_result_and_launch(name):
    text = header(recipe_path(name))
    assert text, f"{name} has no header comment"
    assert "Source:" in text and "docs/recipes.md" in text
    assert "Reported result:" in text
    launch = re.search(r"accelerate launch --config_file (configs/accelerate/\S+\.yaml)", text)
    assert launch, f"{name}: no launch command in the header"
    assert (ROOT / launch.group(1)).is_file()
    assert f"--config configs/recipes/papers/{name}" in text


@pytest.mark.parametrize("name", RECIPES)
def test_header_citations_exist_in_docs_recipes(name):
    """Every `docs/recipes.md §Ax "row"` a header cites is a section and a row of that file (it lives in
    the repository; the table came from the project's shared reference notes)."""
    docs = (ROOT / "docs" / "recipes.md").read_text().replace("**", "")
    text = " ".join(line.lstrip("# ") for line in header(recipe_path(name)).splitlines())
    cites = re.findall(r'docs/recipes\.md §(A\d)(?: row)?(?: "([^"]+)")?', text)
    assert cites, f"{name} cites no section of docs/recipes.md"
    assert "recipes.md" not in text.replace("docs/recipes.md", ""), f"{name} cites a recipes.md outside docs/"
    for section, row in cites:
        assert re.search(rf"^### {section}\. ", docs, re.M), f"{name}: docs/recipes.md has no §{section}"
        if row:
            part = docs.split(f"### {section}. ", 1)[1].split("\n### ", 1)[0]
            assert row in part, f'{name}: docs/recipes.md §{section} has no row "{row}"'


@pytest.mark.parametrize("name", RECIPES)
def test_dry_run_gives_trl_the_published_loss_and_batch(name):
    exp = EXPECTED[name]
    recipe = load_recipe(recipe_path(name))
    out = dry_run(recipe, n_processes=exp["processes"])
    cfg = out["trl_config"]

    assert out["trainer"].endswith("." + exp["trainer"])
    assert out["config_class"].endswith("." + exp["config"])
    for key, value in exp["loss"].items():
        assert out["loss"][key] == pytest.approx(value), f"loss[{key}]"
        assert cfg[key] == pytest.approx(value), f"trl_config[{key}]"
    assert cfg["learning_rate"] == pytest.approx(exp["lr"])

    per_device, accumulation, global_batch = exp["batch"]
    assert cfg["per_device_train_batch_size"] == per_device
    assert cfg["gradient_accumulation_steps"] == accumulation
    assert per_device * accumulation * exp["processes"] == global_batch
    assert out["global_batch_size"] == global_batch == recipe.training["global_batch_size"]
    assert out["processes"] == exp["processes"]


@pytest.mark.parametrize("name", sorted(SIMPO))
def test_simpo_gamma_is_absolute_and_no_nll_term(name):
    recipe = load_recipe(recipe_path(name))
    beta, ratio, gamma, _ = SIMPO[name]
    assert recipe.loss == {"beta": beta, "gamma_beta_ratio": ratio, "label_smoothing": 0.0}
    loss = dry_run(recipe, n_processes=4)["loss"]
    assert loss["simpo_gamma"] == pytest.approx(beta * ratio) == pytest.approx(gamma)
    assert loss["cpo_alpha"] == 0.0  # TRL's default 1.0 would be CPO-SimPO


def test_ipo_beta_is_tau_and_orpo_beta_is_lambda():
    ipo = load_recipe(recipe_path("ipo-zephyr-pref-align-scan.yaml"))
    assert dry_run(ipo, n_processes=8)["trl_config"]["beta"] == ipo.loss["tau"]
    assert ipo.loss_params.length_normalize is True
    orpo = load_recipe(recipe_path("mistral-orpo-beta.yaml"))
    assert dry_run(orpo, n_processes=4)["trl_config"]["beta"] == orpo.loss["lam"]


def test_kto_weights_meet_the_unpaired_balance_rule():
    from prefopt.config.fidelity import check_kto_weights

    kto = load_recipe(recipe_path("kto-zephyr-sft-halos.yaml"))
    assert kto.data.transform == "unpair"  # one desirable + one undesirable row per pair: n_D = n_U
    lp = kto.loss_params
    assert check_kto_weights(1000, 1000, lp.desirable_weight, lp.undesirable_weight) is None


@pytest.mark.parametrize("name", [n for n in RECIPES if EXPECTED[n]["batch"][2] == 128])
@pytest.mark.parametrize("processes", [1, 2, 4, 8, 16])
def test_global_batch_holds_on_any_world_size(name, processes):
    recipe = load_recipe(recipe_path(name))
    t = resolve_batch(recipe, n_processes=processes)
    assert t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] * processes == 128


def test_unreachable_global_batch_is_refused_with_a_fix():
    # the QLoRA recipe (16 = 4 per device × 4 accumulation on 1 GPU) cannot run on 8 GPUs
    recipe = load_recipe(recipe_path("zephyr-7b-beta-dpo-qlora.yaml"))
    with pytest.raises(PrefoptError) as err:
        dry_run(recipe, n_processes=8)
    text = str(err.value)
    assert "global_batch_size = 16 cannot be reached" in text
    assert "per_device_train_batch_size = 4 on 8 process(es)" in text
    assert "per_device_train_batch_size to one of [1, 2]" in text  # 1 × 8 × 2 or 2 × 8 × 1 = 16
    assert (
        resolve_batch(
            recipe.model_copy(update={"training": {**recipe.training, "per_device_train_batch_size": 2}}),
            n_processes=8,
        )["gradient_accumulation_steps"]
        == 1
    )


def test_unreachable_global_batch_exits_2_on_the_command_line(capsys):
    from prefopt.cli import main

    path = str(recipe_path("simpo-mistral-7b-base.yaml"))
    rc = main(["train", "--config", path, "--dry-run", "--set", "training.per_device_train_batch_size=3"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "global_batch_size = 128 cannot be reached with per_device_train_batch_size = 3" in err
    assert "Traceback" not in err


def test_accumulation_contradicting_the_global_batch_is_refused():
    recipe = load_recipe(
        recipe_path("zephyr-7b-beta-dpo-full.yaml"), ["training.gradient_accumulation_steps=4"]
    )
    with pytest.raises(PrefoptError, match="contradicts global_batch_size = 128"):
        resolve_batch(recipe, n_processes=8)


@pytest.mark.parametrize("name", RECIPES)
def test_cli_dry_run_prints_the_trl_configuration(name, capsys):
    from prefopt.cli import main

    assert main(["train", "--config", str(recipe_path(name)), "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["algorithm"] == load_recipe(recipe_path(name)).algorithm
    assert out["trainer"].endswith(EXPECTED[name]["trainer"])
    assert (
        out["trl_config"]["per_device_train_batch_size"]
        * out["trl_config"]["gradient_accumulation_steps"]
        * out["processes"]
        == out["global_batch_size"]
    )


def test_cli_dry_run_plans_the_published_launch_with_processes(capsys):
    """`--dry-run --processes 8` shows what the 8-GPU launch of the Zephyr recipe hands TRL."""
    from prefopt.cli import main

    path = str(recipe_path("zephyr-7b-beta-dpo-full.yaml"))
    assert main(["train", "--config", path, "--dry-run", "--processes", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    per_device, accumulation, global_batch = EXPECTED["zephyr-7b-beta-dpo-full.yaml"]["batch"]
    assert out["processes"] == 8 and out["global_batch_size"] == global_batch
    assert out["trl_config"]["per_device_train_batch_size"] == per_device
    assert out["trl_config"]["gradient_accumulation_steps"] == accumulation
    assert main(["train", "--config", path, "--processes", "8"]) == 2
    err = capsys.readouterr().err
    assert "--processes 8" in err and "--dry-run" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------- smoke
@pytest.mark.parametrize("name", RECIPES)
def test_smoke_recipe_keeps_algorithm_and_loss(name):
    from prefopt.config.smoke import EVAL_ROWS, FIXTURES_DIR, LORA_R, MAX_ROWS, MAX_STEPS, smoke_recipe

    recipe = load_recipe(recipe_path(name))
    smoke = smoke_recipe(recipe)
    assert smoke.algorithm == recipe.algorithm and smoke.loss == recipe.loss and smoke.seed == recipe.seed
    assert smoke.model.name == "builtin:tiny-arith" and smoke.model.dtype == "float32"
    assert (smoke.model.lora is None) == (recipe.model.lora is None)
    if smoke.model.lora is not None:
        assert smoke.model.lora.r <= LORA_R
        assert smoke.model.lora.lora_alpha / smoke.model.lora.r == pytest.approx(
            recipe.model.lora.lora_alpha / recipe.model.lora.r
        )
    assert smoke.model.chat_template == recipe.model.chat_template
    assert smoke.data.transform == recipe.data.transform
    for src, orig in zip(
        smoke.data.train + (smoke.data.eval or []), recipe.data.train + (recipe.data.eval or [])
    ):
        assert src.source == orig.source
        assert Path(src.path).parent == FIXTURES_DIR and Path(src.path).is_file()
        assert src.max_rows in (MAX_ROWS, EVAL_ROWS)
        assert {k: v for k, v in src.options.items()} == {
            k: v for k, v in orig.options.items() if k not in ("config", "revision", "data_dir")
        }
    t = smoke.training
    assert t["max_steps"] == MAX_STEPS and "global_batch_size" not in t and t["save_strategy"] == "no"
    assert t["max_length"] == 128 and t["max_prompt_length"] == 64
    # the same TRL mapping: identical loss parameters, same trainer and config class
    real, small = dry_run(recipe, n_processes=EXPECTED[name]["processes"]), dry_run(smoke, n_processes=1)
    for key in ("loss", "trainer", "config_class", "data_kind", "reference_model"):
        assert small[key] == real[key], key
    assert small["trl_config"]["gradient_accumulation_steps"] == 1
    assert small["trl_config"]["bf16"] is False and small["trl_config"]["gradient_checkpointing"] is False
    assert (
        Path(smoke.output.dir).parent == Path(tempfile.gettempdir()) and not Path(smoke.output.dir).exists()
    )


def test_every_fixture_is_read_by_its_source():
    from prefopt.config.smoke import FIXTURES, FIXTURES_DIR, MAX_ROWS
    from prefopt.data.registry import get_source
    from prefopt.data.report import DropReport

    for source, file in FIXTURES.items():
        report = DropReport(source)
        ds = get_source(source)({"path": str(FIXTURES_DIR / file), "max_rows": MAX_ROWS}, report=report)
        assert 8 <= len(ds) <= MAX_ROWS, (source, len(ds), report.summary())


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_smoke_run_of_every_paper_recipe(name, tmp_path):
    from prefopt.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(recipe_path(name)), "--smoke", "--output-dir", str(run_dir)]) == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["algorithm"] == load_recipe(recipe_path(name)).algorithm
    assert manifest["global_step"] == 3
    assert math.isfinite(manifest["train_loss"])


def test_4bit_builtin_model_evaluates_on_any_cpu():
    """bitsandbytes 0.50 repacks 4-bit weights on AVX512-BF16 CPUs at the first eval-mode no-grad forward,
    and crashes on layers whose sizes are not multiples of its blocks (the builtin models' 96-wide ones).
    prefopt turns the repack off for exactly those layers, so QLoRA smoke runs evaluate on any CPU."""
    import torch
    from bitsandbytes.functional import has_avx512bf16

    from prefopt.model.loading import guard_bnb_cpu_packing, load_model

    recipe = load_recipe(
        recipe_path("zephyr-7b-beta-dpo-qlora.yaml"), overrides=["model.name=builtin:tiny-arith"]
    )
    model, tok = load_model(recipe.model, seed=0)
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers, "no 4-bit layers: the recipe no longer quantises"
    for m in layers:  # what prefopt left on is safe to repack
        if m.support_avx512bf16_for_cpu:
            assert m.out_features % 32 == 0 and m.in_features % m.weight.quant_state.blocksize == 0
    for m in layers:  # on a CPU without AVX512-BF16, pretend it has it: the guard must still catch them
        m.support_avx512bf16_for_cpu = True
    assert guard_bnb_cpu_packing(model) > 0
    real = bool(has_avx512bf16())
    for m in layers:  # back to what this CPU supports, guard applied
        m.support_avx512bf16_for_cpu = m.support_avx512bf16_for_cpu and real
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([tok("1+2=", add_special_tokens=False)["input_ids"]])
        out = model(input_ids=ids).logits
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize(("storage", "dtype"), [("uint8", "torch.uint8"), ("bfloat16", "torch.bfloat16")])
def test_4bit_weights_are_stored_in_the_chosen_dtype(storage, dtype):
    """model.quantization.bnb_4bit_quant_storage reaches bitsandbytes: ZeRO-3 / FSDP shard 4-bit weights
    only when they are stored in the training dtype (docs/cluster.md)."""
    from prefopt.model.loading import load_model

    recipe = load_recipe(
        recipe_path("zephyr-7b-beta-dpo-qlora.yaml"),
        overrides=["model.name=builtin:tiny-arith", f"model.quantization.bnb_4bit_quant_storage={storage}"],
    )
    model, _ = load_model(recipe.model, seed=0)
    weights = [m.weight for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert weights and {str(w.dtype) for w in weights} == {dtype}
