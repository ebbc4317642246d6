"""``prefopt report``: report.md plus readable PNG plots from a run directory's metrics.jsonl, eval.json,
manifest.json and data_report.json; plots whose metrics were not logged are skipped and named."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from prefopt.evaluate.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(run: Path, algorithm: str = "dpo", with_probe: bool = True) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "resolved.yaml").write_text(
        f"algorithm: {algorithm}\nseed: 42\nmodel: {{name: 'world:arith'}}\nloss: {{beta: 0.1}}\n"
    )
    lines = []
    for step in range(1, 41):
        t = step / 40
        rec = {
            "step": step,
            "epoch": t,
            "loss": 0.69 * math.exp(-2 * t) + 0.01,
            "grad_norm": 1.0,
            "learning_rate": 1e-3,
        }
        if algorithm != "kto_minimal":
            rec.update(
                {
                    "rewards/chosen": -0.2 * t,
                    "rewards/rejected": -1.5 * t,
                    "rewards/margins": 1.3 * t,
                    "rewards/accuracies": min(1.0, 0.5 + t),
                    "logps/chosen": -10 - 2 * t,
                    "logps/rejected": -12 - 15 * t,
                }
            )
        if algorithm == "kto":
            rec["kl"] = 0.5 * t
        lines.append(rec)
        if step == 25:
            lines.append(
                {
                    "event": "health",
                    "warning": "overfit",
                    "step": 25,
                    "loss": 0.04,
                    "accuracy": 1.0,
                    "reason": "loss",
                    "advice": "Use IPO or a larger β.",
                }
            )
        if with_probe and step % 10 == 0:
            lines.append(
                {
                    "event": "probe",
                    "step": step,
                    "mean_length": 3 + 0.1 * step,
                    "reference_mean_length": 3.0,
                    "kl_sampled": 0.2 * step,
                }
            )
    lines.append({"step": 40, "train_runtime": 12.0, "train_loss": 0.2})
    lines.append({"step": 41, "loss": "nan"})  # non-finite values are written as strings; skipped in plots
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "manifest.json").write_text(
        json.dumps(
            {
                "status": "finished",
                "algorithm": algorithm,
                "trainer": "prefopt.training.trainers.PrefoptDPOTrainer",
                "seed": 42,
                "global_step": 40,
                "train_loss": 0.2,
                "train_runtime_s": 12.0,
                "data": {"train_rows": 2000, "eval_rows": 0},
                "versions": {"trl": "1.16.0", "torch": "2.x"},
                "git_commit": "abc123",
                "world_size": 1,
                "prefopt_overrides": ["tokenisation: prefopt pre-tokenises"],
            }
        )
    )
    (run / "eval.json").write_text(
        json.dumps(
            {
                "algorithm": algorithm,
                "reward_definition": "beta * (sum logp_policy - sum logp_ref), beta = 0.1",
                "preference": {
                    "source": "world",
                    "num_pairs": 100,
                    "accuracy": 0.8,
                    "reference_accuracy": 0.55,
                    "reward_margin": 1.2,
                    "logp_shift_chosen": -0.5,
                    "logp_shift_rejected": -9.0,
                    "logp_chosen": -3.0,
                    "logp_rejected": -14.0,
                    "reference_logp_chosen": -2.5,
                    "reference_logp_rejected": -5.0,
                    "reward_definition": "beta * ...",
                    "reference_accuracy_definition": "summed logp_ref",
                },
                "sampling": {
                    "num_prompts": 16,
                    "samples_per_prompt": 1,
                    "temperature": 1.0,
                    "max_new_tokens": 8,
                    "kl_to_reference": 1.7,
                    "mean_length": 2.1,
                    "reference_mean_length": 2.3,
                },
                "world": {
                    "policy": {"task": "arith", "reward_sampled": 0.7, "reward_greedy": 0.8},
                    "reference": {"task": "arith", "reward_sampled": 0.5, "reward_greedy": 0.75},
                    "lift_sampled": 0.2,
                    "lift_greedy": 0.05,
                },
                "notes": [],
            }
        )
    )
    (run / "data_report.json").write_text(
        json.dumps(
            {
                "rows_in": 2010,
                "rows_out": 2000,
                "dropped": 10,
                "drops": {"duplicate": 10},
                "truncation": {},
                "notes": [],
            }
        )
    )


def _check_png(path: Path) -> None:
    from matplotlib import image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1024, (path, len(data))
    img = image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert img.std() > 0.01  # not a blank canvas


def test_report_writes_every_plot_and_links_them(tmp_path):
    run = tmp_path / "run"
    _write_run(run, "kto")
    md_path = write_report(run)
    md = md_path.read_text()
    for name in ("loss.png", "rewards.png", "accuracies.png", "logps.png", "kl.png", "lengths.png"):
        _check_png(run / name)
        assert f"]({name})" in md, name
    assert "Not plotted" not in md
    # health warnings, eval table, run and data sections
    assert "`overfit`" in md and "Use IPO" in md
    assert "| held-out preference accuracy (implicit reward) | 0.8 | 0.55 |" in md
    assert "- True-reward lift: sampled 0.2" in md
    assert "duplicate" in md and "abc123" in md


def test_report_skips_absent_metrics_and_says_so(tmp_path):
    run = tmp_path / "bare"
    _write_run(run, "kto_minimal", with_probe=False)
    (run / "eval.json").unlink()
    (run / "manifest.json").unlink()
    md = write_report(run).read_text()
    _check_png(run / "loss.png")
    for name in ("rewards.png", "accuracies.png", "logps.png", "kl.png", "lengths.png"):
        assert not (run / name).exists()
        assert f"`{name}`" in md and f"]({name})" not in md
    assert "`rewards/margins`" in md and "probe is off" in md
    assert "## Evaluation" not in md


def test_dpo_kl_proxy_is_plotted_from_the_rewards(tmp_path):
    run = tmp_path / "dpo"
    _write_run(run, "dpo", with_probe=False)
    md = write_report(run).read_text()
    _check_png(run / "kl.png")  # DPO logs no KL: the plot holds the rewards proxy
    assert "](kl.png)" in md and "lengths.png" in md


def test_report_cli_and_errors(tmp_path, capsys):
    from prefopt.cli.evaluate import add_eval_commands
    from prefopt.core.errors import PrefoptError

    run = tmp_path / "run"
    _write_run(run)
    parser = argparse.ArgumentParser(prog="prefopt")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(run)])
    assert args.func(args) == 0
    assert "report.md" in capsys.readouterr().out and (run / "report.md").exists()
    with pytest.raises(PrefoptError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrefoptError, match="nothing to report"):
        write_report(tmp_path / "empty")
