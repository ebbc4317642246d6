"""The llm pairwise judge: asked in both orders, a verdict only when both orders agree; inconsistent and
unparseable answers counted exactly and never turned into a verdict. Bookkeeping is tested with
deliberately biased stub judges; the real path runs end to end on a builtin model."""

from __future__ import annotations

import hashlib
import re

import pytest

from prefopt.core.errors import PrefoptError
from prefopt.judge import build_judge, tally
from prefopt.judge.agreement import position_bias
from prefopt.judge.llm import DEFAULT_TEMPLATE, LLMJudge

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _garbage(query: str) -> bool:
    """The stub answers garbage for about one query in four (a fixed function of the query's text)."""
    return hashlib.sha256(query.encode()).digest()[0] % 4 == 0


def always_a(queries):
    """Always prefers position A, and sometimes returns garbage."""
    return ["I cannot decide, sorry" if _garbage(q) else "A" for q in queries]


def test_position_biased_stub_gets_no_verdict_and_exact_counts():
    calls = []

    def stub(queries):
        calls.append(list(queries))
        return always_a(queries)

    judge = LLMJudge(stub, name="stub")
    n = 200
    prompts = [f"question {i}" for i in range(n)]
    a, b = [f"first reply {i}" for i in range(n)], [f"second reply {i}" for i in range(n)]
    verdicts = judge.compare(prompts, a, b)
    # expected counts, computed from the stub's own rule on the two rendered queries of each pair
    q1 = [DEFAULT_TEMPLATE.format(prompt=p, reply_a=x, reply_b=y) for p, x, y in zip(prompts, a, b)]
    q2 = [DEFAULT_TEMPLATE.format(prompt=p, reply_a=y, reply_b=x) for p, x, y in zip(prompts, a, b)]
    unparseable = sum(_garbage(x) or _garbage(y) for x, y in zip(q1, q2))
    assert 20 < unparseable < 120  # the stub really does both things
    assert tally(verdicts) == {
        "a": 0,
        "b": 0,
        "tie": 0,
        "inconsistent": n - unparseable,
        "unparseable": unparseable,
        "failed": 0,
    }
    assert all(v.winner is None for v in verdicts)  # no verdict invented
    assert calls == [q1 + q2]  # one batched call, both orders
    bias = position_bias(verdicts)
    assert bias["first_position_rate"] == 1.0 and bias["consistency"] == 0.0
    assert bias["answers"] == sum(not _garbage(q) for q in q1 + q2)
    assert bias["unparseable"] == unparseable and bias["inconsistent"] == n - unparseable


def test_mixed_stub_counts_each_outcome_exactly():
    """Pair i's behaviour is chosen by i mod 6: content-faithful (right reply, so consistent), always A,
    always B, garbage in the swapped order only, tie in both orders, tie in one order only."""

    def stub(queries):
        out = []
        for q in queries:
            i = int(re.search(r"Prompt: q(\d+)", q).group(1))
            first = re.search(r"Reply A: (\S+)", q).group(1)
            swapped = first.startswith("bad")
            mode = i % 6
            if mode == 0:
                out.append("B" if swapped else "A")  # always picks the good reply
            elif mode == 1:
                out.append("A")
            elif mode == 2:
                out.append(" (B) because")
            elif mode == 3:
                out.append("???" if swapped else "A")
            elif mode == 4:
                out.append("TIE")
            else:
                out.append("A" if swapped else "TIE")
        return out

    judge = LLMJudge(stub, name="mixed", tie_label="TIE")
    n = 60
    prompts = [f"q{i}" for i in range(n)]
    verdicts = judge.compare(prompts, [f"good{i}" for i in range(n)], [f"bad{i}" for i in range(n)])
    assert tally(verdicts) == {"a": 10, "b": 0, "tie": 10, "inconsistent": 30, "unparseable": 10, "failed": 0}
    for i, v in enumerate(verdicts):
        want = {0: "a", 1: None, 2: None, 3: None, 4: "tie", 5: None}[i % 6]
        assert v.winner == want, (i, v)
    assert verdicts[3].positions == ("A", None) and verdicts[3].raw == ("A", "???")
    assert verdicts[2].positions == ("B", "B")


@pytest.mark.parametrize(
    "answer, position",
    [
        ("A", "A"),
        ("B", "B"),
        ("  b", None),  # labels are case-sensitive: a lower-case word is not a verdict
        ("Reply B", "B"),
        ("answer: A.", "A"),
        ("(A) is better", "A"),
        ("**B**", "B"),
        ("AB", None),
        ("A reply", "A"),
        ("The answer is A", None),  # a label not at the start is not read (no guessing)
        ("", None),
        ("Because", None),
    ],
)
def test_parsing_reads_a_label_at_the_start_only(answer, position):
    assert LLMJudge(lambda q: q, name="x").parse(answer) == position


def test_custom_labels_pattern_and_template():
    judge = LLMJudge(
        lambda qs: ["verdict=2" if "[1] x" in q else "verdict=1" for q in qs],
        name="custom",
        template="Q {prompt}\n[1] {reply_a}\n[2] {reply_b}\n",
        labels=("1", "2"),
        pattern=r"verdict=(\d)",
    )
    # whichever reply is "x", the stub prefers the other one, in both orders: a consistent verdict for y
    assert [v.winner for v in judge.compare(["p", "p"], ["x", "y"], ["y", "x"])] == ["b", "a"]


def test_a_failing_answerer_names_the_judge_and_the_prompt_index():
    def stub(queries):
        if any("poison" in q for q in queries):
            raise RuntimeError("out of memory")
        return ["A"] * len(queries)

    judge = LLMJudge(stub, name="stub", where="judge")
    with pytest.raises(PrefoptError) as err:
        judge.compare(["ok", "poison", "ok"], ["x"] * 3, ["y"] * 3)
    assert 'judge "stub" raised RuntimeError: out of memory on prompt 1' in str(err.value)


def test_llm_judge_gives_no_scores():
    with pytest.raises(PrefoptError, match="compares pairs and gives no score"):
        LLMJudge(lambda q: q, name="x").score(["p"], ["r"])


def test_chat_wraps_the_judge_prompt_as_a_user_message():
    seen = []
    judge = LLMJudge(lambda qs: seen.extend(qs) or ["A"] * len(qs), name="chat", chat=True)
    judge.compare([[{"role": "user", "content": "hi"}]], ["x"], ["y"])
    assert seen[0][0]["role"] == "user" and "Prompt: user: hi" in seen[0][0]["content"]


def test_end_to_end_on_a_builtin_model_runs_and_counts():
    judge = build_judge({"type": "llm", "model": "builtin:tiny-arith", "max_new_tokens": 4, "batch_size": 16})
    prompts = [f"{a}+{b}=" for a in range(4) for b in range(3)]
    good = [str(a + b) for a in range(4) for b in range(3)]
    bad = [str(a + b + 1) for a in range(4) for b in range(3)]
    verdicts = judge.compare(prompts, good, bad)
    counts = tally(verdicts)
    assert sum(counts.values()) == len(prompts)
    assert all(v.raw is not None and len(v.raw) == 2 for v in verdicts)
    # every verdict that was given is backed by two parseable answers that agree
    for v in verdicts:
        if v.winner is not None:
            assert None not in v.positions
        else:
            assert v.reason in ("inconsistent", "unparseable")
    assert judge.name == "llm:builtin:tiny-arith"
