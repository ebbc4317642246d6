"""``evaluation.judge:`` in a recipe: the trained policy's win rate against its reference in eval.json,
and a judge that cannot work refused before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from prefopt.cli import main

REPO = Path(__file__).resolve().parents[2]
TRUE_REWARD = {"type": "callable", "function": "prefopt.world:TASKS.arith.reward", "name": "true-reward"}


def _recipe(tmp_path: Path, judge) -> Path:
    r = yaml.safe_load((REPO / "configs/recipes/quickstart/dpo.yaml").read_text())
    r["training"]["max_steps"] = 4
    r["evaluation"] = {"world_prompts": 16, "max_prompts": 8, "max_new_tokens": 8, "judge": judge}
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def test_the_win_rate_lands_in_eval_json(tmp_path, one_torch_thread):
    out = tmp_path / "run"
    assert main(["train", "--config", str(_recipe(tmp_path, TRUE_REWARD)), "--output-dir", str(out)]) == 0
    ev = json.loads((out / "eval.json").read_text())
    wr = ev["judged"]["win_rate"]
    assert wr["n"] == 8 and wr["wins"] + wr["ties"] + wr["losses"] == 8
    assert ev["summary"]["win_rate"] == wr["win_rate"] and "lc_win_rate" in ev["summary"]


def test_a_judge_that_cannot_import_is_exit_2_before_any_model(tmp_path, capsys, monkeypatch):
    import prefopt.pipeline.run as run

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(run, "load_model", no_model)
    bad = {"type": "callable", "function": "prefopt.world:no_such_reward"}
    assert (
        main(["train", "--config", str(_recipe(tmp_path, bad)), "--output-dir", str(tmp_path / "run")]) == 2
    )
    err = capsys.readouterr().err
    assert "evaluation.judge" in err and "Traceback" not in err


def test_dry_run_checks_the_judges_without_a_model(tmp_path, capsys):
    bad = {"type": "callable", "function": "prefopt.world:no_such_reward"}
    assert main(["train", "--config", str(_recipe(tmp_path, bad)), "--dry-run"]) == 2
    assert "evaluation.judge" in capsys.readouterr().err
    assert main(["train", "--config", str(_recipe(tmp_path, TRUE_REWARD)), "--dry-run"]) == 0
    online = REPO / "configs/recipes/quickstart/online_dpo.yaml"
    assert main(["train", "--config", str(online), "--dry-run"]) == 0
    capsys.readouterr()
    bad_online = ["--set", "online.judge.function=prefopt.world:nope"]
    assert main(["train", "--config", str(online), *bad_online, "--dry-run"]) == 2
    assert "online.judge.function" in capsys.readouterr().err
