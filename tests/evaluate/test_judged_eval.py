"""``prefopt eval --judge``: win rate of the policy against its reference (prefopt/evaluate/judged.py),
perplexity on held-out chosen replies, and where they show up (eval.json summary, report.md, the compare
table)."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from prefopt.config.recipe import load_recipe
from prefopt.evaluate.judged import judged_section, judged_summary, perplexity
from prefopt.evaluate.judged_report import report_lines
from prefopt.judge import build_judge
from prefopt.studies.compare.tables import win_rate_cell

TRUE_REWARD = {"type": "callable", "function": "prefopt.world:TASKS.arith.reward", "name": "truth"}


@pytest.fixture(scope="module")
def tiny():
    from prefopt.model.loading import build_builtin, load_tokenizer

    return build_builtin("tiny-arith", 0).eval(), load_tokenizer("builtin:tiny-arith")


def _recipe(**evaluation):
    return load_recipe(
        data={
            "algorithm": "dpo",
            "model": {"name": "builtin:tiny-arith"},
            "data": {"train": [{"source": "world"}]},
            "evaluation": {"max_new_tokens": 4, "num_samples": 2, **evaluation},
        }
    )


def test_perplexity_is_token_weighted_exp_of_mean_negative_logp():
    lp = torch.tensor([-2.0, -4.0])
    n = torch.tensor([1, 3])
    assert perplexity(lp, n) == pytest.approx(math.exp(6.0 / 4.0))
    assert perplexity(torch.tensor([0.0]), torch.tensor([0])) is None


def test_a_policy_against_itself_ties_everything_and_scores_one_half(tiny):
    """Same model, same seed: sample i of each side draws the same stream, so a length judge ties every
    pair — win rate ½, LC ½, score lift 0 (with different streams the random model's lengths differ)."""
    model, tok = tiny
    pairs = Dataset.from_list(
        [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": "0"} for i in range(6)]
    )
    judge = build_judge({"type": "callable", "function": "judge_len:score"})
    sec = judged_section(model, model, tok, _recipe(), judge, pairs, None, n_boot=50)
    wr = sec["win_rate"]
    assert sec["num_prompts"] == 6 and wr["n"] == 12
    assert wr["ties"] == 12 and wr["win_rate"] == 0.5
    assert wr["lc_win_rate"] == pytest.approx(0.5)
    assert sec["score"]["lift"] == 0.0
    assert judged_summary({"judged": sec})["win_rate"] == 0.5


def test_win_rate_counts_the_policy_in_position_a(tiny):
    """The policy is position a: swapping the two models mirrors the counts (wins ↔ losses) and the win
    rate and LC win rate of the two orders sum to 1 (a length judge on two different random models)."""
    from prefopt.model.loading import build_builtin

    model, tok = tiny
    other = build_builtin("tiny-arith", 1).eval()  # another random model: different replies
    judge = build_judge({"type": "callable", "function": "judge_len:score"})
    pairs = Dataset.from_list([{"prompt": f"{i}+{i}=", "chosen": "1", "rejected": "2"} for i in range(10)])
    a = judged_section(model, other, tok, _recipe(), judge, pairs, None, n_boot=0)["win_rate"]
    b = judged_section(other, model, tok, _recipe(), judge, pairs, None, n_boot=0)["win_rate"]
    assert a["n"] == b["n"] == 20
    assert (a["wins"], a["ties"], a["losses"]) == (b["losses"], b["ties"], b["wins"])
    assert a["win_rate"] + b["win_rate"] == pytest.approx(1.0)
    assert a["lc_win_rate"] + b["lc_win_rate"] == pytest.approx(1.0, abs=1e-6)


@pytest.fixture(autouse=True)
def _length_judge(tmp_path, monkeypatch):
    (tmp_path / "judge_len.py").write_text("def score(prompt, reply):\n    return float(len(reply))\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_world_prompts_are_used_without_held_out_pairs(tiny):
    model, tok = tiny
    sec = judged_section(
        model, model, tok, _recipe(max_prompts=5), build_judge(TRUE_REWARD), None, "arith", n_boot=0
    )
    assert sec["prompts_from"] == "world:arith test prompts" and sec["num_prompts"] == 5
    no = judged_section(model, model, tok, _recipe(), build_judge(TRUE_REWARD), None, None)
    assert "win_rate" not in no and "--data" in no["note"]


def test_report_and_compare_table_show_the_win_rate():
    ev = {
        "judged": {
            "judge": {"name": "truth"},
            "against": "reference",
            "prompts_from": "world:arith test prompts",
            "num_prompts": 10,
            "samples_per_prompt": 1,
            "temperature": 1.0,
            "win_rate": {
                "wins": 5,
                "ties": 3,
                "losses": 2,
                "no_verdict": {"failed": 1},
                "win_rate": 0.65,
                "win_rate_ci": [0.5, 0.8],
                "lc_win_rate": 0.61,
                "lc_win_rate_ci": [0.45, 0.77],
                "length_coef": 0.2,
                "mean_length_delta": 1.5,
                "confidence": 0.95,
            },
            "score": {"policy": 0.7, "other": 0.5, "lift": 0.2},
        }
    }
    text = "\n".join(report_lines(ev))
    assert "| win rate (win 1, tie ½) | 0.650 | 0.500 – 0.800 |" in text
    assert "| length-controlled win rate | 0.610 | 0.450 – 0.770 |" in text
    assert "5 wins, 3 ties, 2 losses, 1 without a verdict" in text and "lift +0.2" in text
    assert report_lines({}) == []
    assert win_rate_cell({"win_rate": 0.65, "lc_win_rate": 0.61}) == "0.650 (LC 0.610)"
    assert win_rate_cell({}) == "—"


def test_evaluate_models_hook_writes_judged_section_summary_and_perplexity(tiny, tmp_path):
    """evaluate_models with a judge and ``against``: the judged section names the other side, the summary
    carries the win rate, and the preference section the perplexities (policy ≠ reference here)."""
    import json

    from prefopt.evaluate.metrics import evaluate_models, format_summary
    from prefopt.model.loading import build_builtin

    model, tok = tiny
    rows = [{"prompt": f"{i}+2=", "chosen": str(i + 2), "rejected": str(i + 3)} for i in range(4)]
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe(
        data={
            "algorithm": "dpo",
            "model": {"name": "builtin:tiny-arith"},
            "data": {"train": [{"source": "jsonl", "path": str(f)}]},
            "evaluation": {"max_new_tokens": 4, "max_prompts": 4},
        }
    )
    other = build_builtin("tiny-arith", 1).eval()
    judge = build_judge({"type": "callable", "function": "judge_len:score"})
    res = evaluate_models(
        model,
        build_builtin("tiny-arith", 2).eval(),
        tok,
        recipe,
        Dataset.from_list(rows),
        judge=judge,
        against=("runs/x", other),
    )
    assert res["judged"]["against"] == "runs/x" and res["judged"]["num_prompts"] == 4
    assert res["summary"]["win_rate"] == res["judged"]["win_rate"]["win_rate"]
    pref = res["preference"]
    assert pref["perplexity_chosen"] > 1 and pref["reference_perplexity_chosen"] > 1
    assert pref["perplexity_chosen"] != pref["reference_perplexity_chosen"]
    assert "win_rate" in format_summary(res) and "perplexity_chosen" in format_summary(res)
    assert "judged" not in evaluate_models(model, model, tok, recipe, Dataset.from_list(rows))
