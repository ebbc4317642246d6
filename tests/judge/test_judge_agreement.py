"""Agreement statistics on hand-computed cases: agreement and Cohen's κ (against sklearn's formula,
written out here), accuracy on human labels, length bias and position bias."""

from __future__ import annotations

import math

import pytest

from prefopt.judge import Verdict
from prefopt.judge.agreement import accuracy, agreement, agreement_table, length_bias, position_bias


def kappa_sklearn_formula(y1, y2):
    """sklearn.metrics.cohen_kappa_score (unweighted), written out: 1 − Σ w·C / Σ w·E with w = 1 − I,
    C the confusion matrix and E the outer product of its marginals divided by its total."""
    labels = sorted(set(y1) | set(y2))
    idx = {c: i for i, c in enumerate(labels)}
    k = len(labels)
    conf = [[0.0] * k for _ in range(k)]
    for a, b in zip(y1, y2):
        conf[idx[a]][idx[b]] += 1
    rows = [sum(r) for r in conf]
    cols = [sum(conf[i][j] for i in range(k)) for j in range(k)]
    total = sum(rows)
    expected = [[rows[i] * cols[j] / total for j in range(k)] for i in range(k)]
    w = [[0.0 if i == j else 1.0 for j in range(k)] for i in range(k)]
    num = sum(w[i][j] * conf[i][j] for i in range(k) for j in range(k))
    den = sum(w[i][j] * expected[i][j] for i in range(k) for j in range(k))
    return 1 - num / den


def test_kappa_textbook_case():
    # 50 pairs: both say a 20 times, first a / second b 5, first b / second a 10, both b 15
    first = ["a"] * 20 + ["a"] * 5 + ["b"] * 10 + ["b"] * 15
    second = ["a"] * 20 + ["b"] * 5 + ["a"] * 10 + ["b"] * 15
    res = agreement(first, second)
    assert res["n"] == 50 and res["excluded"] == 0
    assert res["agreement"] == pytest.approx(0.7)
    assert res["expected_agreement"] == pytest.approx(0.5)  # 0.5·0.6 + 0.5·0.4
    assert res["kappa"] == pytest.approx(0.4)
    assert res["confusion"] == {"a|a": 20, "a|b": 5, "b|a": 10, "b|b": 15}


def test_kappa_with_ties_and_missing_verdicts_matches_sklearns_formula():
    first = ["a", "a", "b", "tie", "b", "a", None, "b", "tie", "a", "b", "a"]
    second = ["a", "b", "b", "tie", "a", "a", "a", None, "b", "a", "b", "tie"]
    res = agreement(first, second)
    kept = [(x, y) for x, y in zip(first, second) if x is not None and y is not None]
    assert res["n"] == len(kept) == 10 and res["excluded"] == 2
    assert res["agreement"] == pytest.approx(sum(x == y for x, y in kept) / 10)
    assert res["kappa"] == pytest.approx(kappa_sklearn_formula([x for x, _ in kept], [y for _, y in kept]))
    # hand: p_o = 6/10; marginals first a5 b3 tie2, second a4 b4 tie2 → p_e = .20+.12+.04 = .36
    assert res["kappa"] == pytest.approx((0.6 - 0.36) / (1 - 0.36))


def test_kappa_edge_cases():
    assert math.isnan(agreement(["a"] * 5, ["a"] * 5)["kappa"])  # p_e = 1: undefined, NaN as in sklearn
    assert agreement(["a", "b"], ["b", "a"])["kappa"] == pytest.approx(-1.0)
    empty = agreement([None, "a"], ["a", None])
    assert empty["n"] == 0 and math.isnan(empty["kappa"])
    verdicts = [Verdict("a"), Verdict(None, "inconsistent"), Verdict("b")]
    assert agreement(verdicts, ["a", "a", "a"])["n"] == 2
    with pytest.raises(ValueError, match="not a verdict label"):
        agreement(["chosen"], ["a"])


def test_accuracy_on_human_labels():
    human = ["a", "b", "a", "a", "b", "b", "a", "b"]
    judge = ["a", "b", "b", "tie", None, "b", "a", "a"]
    res = accuracy(judge, human)
    assert res == {
        "n": 8,
        "decided": 6,
        "correct": 4,
        "ties": 1,
        "no_verdict": 1,
        "accuracy": pytest.approx(4 / 6),
        "accuracy_ties_half": pytest.approx(4.5 / 7),
        "coverage": pytest.approx(7 / 8),
    }
    with pytest.raises(ValueError, match="human label must be"):
        accuracy(["a"], ["tie"])


def test_length_bias_counts_how_often_the_longer_reply_wins():
    a = ["xxxx", "x", "xx", "xxx", "xx", "x"]
    b = ["x", "xxxx", "xx", "x", "x", "xx"]
    verdicts = ["a", "b", "a", "b", "tie", None]
    # decided pairs: 0 (a longer, a wins: yes), 1 (b longer, b wins: yes), 2 (equal: left out), 3 (a longer,
    # b wins: no); 4 is a tie and 5 has no verdict
    assert length_bias(verdicts, a, b) == {
        "n": 3,
        "equal_length": 1,
        "longer_wins": 2,
        "longer_win_rate": 2 / 3,
    }
    tokens = length_bias(["a"], ["one two"], ["three"], length=lambda s: len(s.split()))
    assert tokens["longer_win_rate"] == 1.0


def test_position_bias_from_both_orders():
    verdicts = [
        Verdict(None, "inconsistent", positions=("A", "A")),
        Verdict("a", positions=("A", "B")),
        Verdict("b", positions=("B", "A")),
        Verdict(None, "unparseable", positions=("A", None)),
        Verdict("tie", positions=("tie", "tie")),
    ]
    res = position_bias(verdicts)
    # single-order answers naming a position: A, A, A, B, B, A, A → 5 of 7 chose A
    assert res["answers"] == 7 and res["first_position_rate"] == pytest.approx(5 / 7)
    # pairs with both orders parseable: 4, of which 3 consistent
    assert res["consistency"] == pytest.approx(3 / 4)
    assert res["inconsistent"] == 1 and res["unparseable"] == 1
    with pytest.raises(ValueError, match="both orders"):
        position_bias([Verdict("a", scores=(1.0, 0.0))])


def test_agreement_table_for_several_judges():
    human = ["a", "a", "b", "b"]
    table = agreement_table(
        {
            "rm": [Verdict("a"), Verdict("a"), Verdict("b"), Verdict("a")],
            "llm": [
                Verdict("a", positions=("A", "B")),
                Verdict(None, "inconsistent", positions=("A", "A")),
                Verdict("b", positions=("B", "A")),
                Verdict("b", positions=("B", "A")),
            ],
        },
        human=human,
        replies_a=["xx", "x", "x", "xx"],
        replies_b=["x", "xx", "xx", "x"],
    )
    assert table["judges"]["rm"]["human"]["accuracy"] == pytest.approx(3 / 4)
    assert table["judges"]["llm"]["human"]["accuracy"] == pytest.approx(1.0)
    assert table["judges"]["llm"]["counts"]["inconsistent"] == 1
    assert "position_bias" in table["judges"]["llm"] and "position_bias" not in table["judges"]["rm"]
    assert table["judges"]["rm"]["length_bias"]["longer_win_rate"] == pytest.approx(3 / 4)
    assert table["pairs"]["rm vs llm"]["n"] == 3
    assert table["pairs"]["rm vs llm"]["agreement"] == pytest.approx(2 / 3)
