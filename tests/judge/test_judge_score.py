"""The judge registry and the score judges: the judge: block, callable judges (the world's true reward
among them), ensembles, failures counted, and judges that raise stopped with the prompt index."""

from __future__ import annotations

import pytest

from prefopt.core.errors import PrefoptError
from prefopt.judge import Verdict, build_judge, judge_types, parse_judge_config, tally
from prefopt.judge.ensemble import combine_scores


def test_registry_lists_the_four_types():
    assert judge_types() == ["callable", "ensemble", "llm", "reward_model"]


def test_world_true_reward_is_a_callable_judge():
    judge = build_judge({"type": "callable", "function": "prefopt.world:TASKS.arith.reward"})
    assert judge.name == "callable:prefopt.world:TASKS.arith.reward"
    assert judge.score(["37+48=", "37+48=", "1+1="], ["85", "86", " 2 "]) == [1.0, 0.0, 1.0]
    verdicts = judge.compare(["37+48=", "2+2=", "3+3="], ["85", "5", "7"], ["84", "4", "8"])
    assert [v.winner for v in verdicts] == ["a", "b", "tie"]
    assert verdicts[0].scores == (1.0, 0.0)
    count = build_judge({"type": "callable", "function": "prefopt.world:TASKS.count.reward"})
    assert count.score(["count b 3:"], ["bbb"]) == [1.0]


def test_callable_kwargs_batched_and_tie_margin():
    judge = build_judge({"type": "callable", "function": "judge_helpers:length", "kwargs": {"scale": 2.0}})
    assert judge.score(["p", "p"], ["ab", "abcd"]) == [4.0, 8.0]
    batched = build_judge({"type": "callable", "function": "judge_helpers:lengths_batched", "batched": True})
    assert batched.score(["p", "q"], ["abc", ""]) == [3.0, 0.0]
    margin = build_judge({"type": "callable", "function": "judge_helpers:length", "tie_margin": 1.0})
    assert [v.winner for v in margin.compare(["p"] * 3, ["ab", "abcd", "a"], ["abc", "a", "abc"])] == [
        "tie",
        "a",
        "b",
    ]
    nested = build_judge({"type": "callable", "function": "judge_helpers:TABLE.nested.score"})
    assert nested.score(["p"], ["xyz"]) == [3.0]


def test_unusable_scores_are_failures_never_filled_in():
    judge = build_judge({"type": "callable", "function": "judge_helpers:unusable"})
    assert judge.score(["p"] * 4, ["ab", "none", "nan", "inf"]) == [2.0, None, None, None]
    verdicts = judge.compare(["p"] * 3, ["ab", "none", "a"], ["a", "abc", "nan"])
    assert [v.winner for v in verdicts] == ["a", None, None]
    assert tally(verdicts) == {"a": 1, "b": 0, "tie": 0, "inconsistent": 0, "unparseable": 0, "failed": 2}


def test_a_judge_that_raises_names_itself_and_the_prompt_index():
    judge = build_judge({"type": "callable", "function": "judge_helpers:raises_on_bad"})
    with pytest.raises(PrefoptError) as err:
        judge.score(["ok", "ok", "bad", "ok"], ["r"] * 4)
    msg = str(err.value)
    assert err.value.where == "judge" and err.value.exit_code == 2
    assert 'judge "callable:judge_helpers:raises_on_bad" raised ValueError: cannot score this one' in msg
    assert "on prompt 2 ('bad')" in msg
    with pytest.raises(PrefoptError, match="on prompt 1 "):  # compare: the index of the pair's prompt
        judge.compare(["ok", "bad", "ok"], ["x"] * 3, ["y"] * 3)


def test_a_batched_judge_that_raises_is_rerun_item_by_item_to_find_the_prompt():
    judge = build_judge(
        {"type": "callable", "function": "judge_helpers:batched_raises_on_bad", "batched": True}
    )
    with pytest.raises(PrefoptError, match=r"raised RuntimeError: batch contains a bad prompt on prompt 3 "):
        judge.score(["a", "b", "c", "bad"], ["r"] * 4)


def test_a_batched_judge_returning_the_wrong_count_is_an_error():
    judge = build_judge({"type": "callable", "function": "judge_helpers:lengths_batched", "batched": True})
    judge.fn = lambda prompts, replies: [1.0]
    with pytest.raises(PrefoptError, match="returned 1 results for 3 inputs"):
        judge.score(["a", "b", "c"], ["r"] * 3)


@pytest.mark.parametrize(
    "block, where, text",
    [
        (None, "judge", "no judge is configured"),
        ({}, "judge", 'missing required key "type"'),
        ({"type": "reward"}, "judge.type", 'unknown judge type "reward". Did you mean "reward_model"?'),
        ({"type": "callable"}, "judge", 'missing required key "judge.function"'),
        (
            {"type": "callable", "function": "judge_helpers:length", "batch": True},
            "judge",
            'unknown key "judge.batch" for a callable judge. Did you mean "batched"?',
        ),
        ({"type": "callable", "function": "nonexistent_module_x:f"}, "judge.function", "cannot be imported"),
        (
            {"type": "callable", "function": "judge_helpers"},
            "judge.function",
            'not of the form "module:function"',
        ),
        (
            {"type": "callable", "function": "judge_helpers:lenght"},
            "judge.function",
            'Did you mean "length"?',
        ),
        (
            {"type": "callable", "function": "judge_helpers:NOT_A_FUNCTION"},
            "judge.function",
            "not a function",
        ),
        (
            {"type": "callable", "function": "prefopt.world:TASKS.arth.reward"},
            "judge.function",
            'Did you mean "arith"?',
        ),
        ({"type": "callable", "function": "judge_helpers:length", "tie_margin": -1}, "judge", "tie_margin"),
        ({"type": "reward_model"}, "judge", 'missing required key "judge.path"'),
        (
            {"type": "llm", "model": "builtin:tiny-arith", "template": "{prompt} {reply_a}"},
            "judge.template",
            "{reply_b}",
        ),
        (
            {"type": "llm", "model": "builtin:tiny-arith", "template": "{prompt} {reply_a} {reply_b} {x}"},
            "judge.template",
            "cannot be filled",
        ),
        ({"type": "llm", "model": "builtin:tiny-arith", "labels": ["A", "A"]}, "judge.labels", "distinct"),
        (
            {"type": "llm", "model": "builtin:tiny-arith", "pattern": "("},
            "judge.pattern",
            "not a valid regex",
        ),
        ({"type": "ensemble", "judges": []}, "judge", "judge.judges"),
        (
            {
                "type": "ensemble",
                "combine": "weighted_sum",
                "judges": [{"type": "callable", "function": "a:b"}],
            },
            "judge.weights",
            "needs weights",
        ),
        (
            {
                "type": "ensemble",
                "combine": "weighted_sum",
                "weights": [1, 2],
                "judges": [{"type": "callable", "function": "a:b"}],
            },
            "judge.weights",
            "2 weights for 1 judges",
        ),
        (
            {"type": "ensemble", "judges": [{"type": "callable", "function": "a:b"}, {"type": "lm"}]},
            "judge.judges[1].type",
            'unknown judge type "lm"',
        ),
        (
            {"type": "ensemble", "judges": [{"type": "llm", "model": "builtin:tiny-arith"}]},
            "judge.judges[0]",
            "cannot be an ensemble member",
        ),
    ],
)
def test_bad_judge_blocks_are_exit_2_naming_the_field(block, where, text):
    with pytest.raises(PrefoptError) as err:
        build_judge(block)
    assert err.value.exit_code == 2
    assert err.value.where == where, str(err.value)
    assert text in str(err.value)


def test_validation_loads_nothing():
    # an llm judge over a model that does not exist validates (the model is only read when built)
    cfg = parse_judge_config({"type": "llm", "model": "/nonexistent/model"})
    assert cfg.type == "llm"


def test_missing_model_for_llm_judge_names_the_judge_field():
    with pytest.raises(PrefoptError) as err:
        build_judge({"type": "llm", "model": "builtin:tiny-arth"})
    assert err.value.where == "judge.model"
    assert 'Did you mean "tiny-arith"' in str(err.value)


def test_ensemble_combines_by_hand_computed_rules():
    members = [
        {"type": "callable", "function": "judge_helpers:length"},
        {"type": "callable", "function": "judge_helpers:length", "kwargs": {"scale": 3.0}},
    ]
    replies = ["ab", "abcd"]  # member scores (2, 6) and (4, 12)
    cases = {
        ("weighted_sum", (1.0, 2.0)): [2 + 12, 4 + 24],
        ("mean", None): [4.0, 8.0],
        ("min", None): [2.0, 4.0],
        ("mean_minus_std", None): [4.0 - 2.0, 8.0 - 4.0],  # population std of (2, 6) is 2
    }
    for (combine, weights), want in cases.items():
        block = {"type": "ensemble", "combine": combine, "judges": members}
        if weights:
            block["weights"] = list(weights)
        assert build_judge(block).score(["p", "p"], replies) == pytest.approx(want), combine
    k2 = build_judge({"type": "ensemble", "combine": "mean_minus_std", "k": 2.0, "judges": members})
    assert k2.score(["p"], ["ab"]) == pytest.approx([4.0 - 4.0])
    assert combine_scores([1.0, None], "mean") is None
    nested = build_judge(
        {
            "type": "ensemble",
            "combine": "min",
            "judges": [members[0], {"type": "ensemble", "judges": members}],
        }
    )
    assert nested.score(["p"], ["abc"]) == [3.0]
    assert nested.name == (
        "ensemble:min(callable:judge_helpers:length, ensemble:mean(callable:judge_helpers:length, "
        "callable:judge_helpers:length))"
    )


def test_ensemble_member_failures_propagate_as_failures_and_errors_name_the_member():
    block = {
        "type": "ensemble",
        "judges": [
            {"type": "callable", "function": "judge_helpers:length"},
            {"type": "callable", "function": "judge_helpers:unusable"},
        ],
    }
    assert build_judge(block).score(["p", "p"], ["ab", "nan"]) == [2.0, None]
    block["judges"][1] = {"type": "callable", "function": "judge_helpers:raises_on_bad"}
    with pytest.raises(PrefoptError) as err:
        build_judge(block).score(["ok", "bad"], ["r", "r"])
    assert err.value.where == "judge.judges[1]" and "on prompt 1" in str(err.value)


def test_verdict_as_dict_and_tally_keys():
    v = Verdict(None, "inconsistent", positions=("A", "A"), raw=("A", "A"))
    assert v.as_dict() == {
        "winner": None,
        "reason": "inconsistent",
        "positions": ["A", "A"],
        "raw": ["A", "A"],
    }
    assert tally([]) == {"a": 0, "b": 0, "tie": 0, "inconsistent": 0, "unparseable": 0, "failed": 0}
