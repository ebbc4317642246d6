"""The generate → judge → pair pipeline: pairings on fixed replies (counts exact), provenance on every
row, the drop report, pairwise (LLM) judges by round robin, resuming a killed run without regenerating
finished prompts (and with the same result), and bad input."""

from __future__ import annotations

import json

import pytest

from prefopt.core.errors import PrefoptError
from prefopt.judge import build_judge
from prefopt.judge.llm import LLMJudge
from prefopt.judge.pipeline import generate_preferences
from prefopt.model.engines.base import Completion, Engine, temperatures_of


class FixedEngine(Engine):
    """Replies fixed per prompt (``replies[prompt][t * k + j]``); records what it was asked to generate."""

    name = "fixed"

    def __init__(self, replies):
        self.replies = replies
        self.calls: list[list] = []

    def generate(self, prompts, k=1, temperature=1.0, max_new_tokens=64, seed=0):
        self.calls.append(list(prompts))
        temps = temperatures_of(temperature)
        return [
            [
                Completion(
                    text=self.replies[p][ti * k + j],
                    token_ids=(),
                    length=len(self.replies[p][ti * k + j]),
                    finished=True,
                    temperature=t,
                    sample_index=j,
                    prompt_index=i,
                )
                for ti, t in enumerate(temps)
                for j in range(k)
            ]
            for i, p in enumerate(prompts)
        ]


LENGTH = {"type": "callable", "function": "judge_helpers:length"}
REPLIES = {
    "p0": ["aaa", "a", "aa", "aaaa"],  # scores 3 1 2 4
    "p1": ["bb", "bb", "bb", "bb"],  # all tie
    "p2": ["", "  ", "ccc", ""],  # three empty replies: one usable reply left
    "p3": ["d", "nan", "dd", "ddd"],  # the judge fails on "nan"
}


def _run(pairing="best_vs_worst", judge=LENGTH, replies=REPLIES, **kw):
    engine = FixedEngine(replies)
    judge = build_judge(judge) if isinstance(judge, dict) else judge
    return generate_preferences(list(replies), engine, judge, k=4, pairing=pairing, **kw), engine


def test_best_vs_worst_rows_provenance_and_drop_report():
    res, _ = _run(judge={"type": "callable", "function": "judge_helpers:unusable"})
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in res.rows] == [
        ("p0", "aaaa", "a"),
        ("p3", "ddd", "d"),
    ]
    row = res.rows[0]
    assert (row["score_chosen"], row["score_rejected"]) == (4.0, 1.0)
    assert row["provenance"]["judge"] == "callable:judge_helpers:unusable"
    assert row["provenance"]["chosen"] == {"temperature": 1.0, "sample_index": 3}
    assert row["provenance"]["rejected"] == {"temperature": 1.0, "sample_index": 1}
    assert row["provenance"]["scores"] == [3.0, 1.0, 2.0, 4.0]
    assert row["provenance"]["pairing"] == "best_vs_worst" and row["prompt_id"]
    report = res.report.as_dict()
    assert report["drops"] == {"empty_reply": 3, "judge_failed": 1, "score_tie": 1, "too_few_replies": 1}
    assert [(s["step"], s["rows_in"], s["rows_out"]) for s in report["steps"]] == [
        ("generate", 4, 16),
        ("judge replies", 16, 12),
        ("pair", 4, 2),
    ]


def test_margin_and_all_above_margin():
    res, _ = _run("best_vs_worst", margin=3.0)
    assert [r["prompt"] for r in res.rows] == []  # p0's spread is 4 - 1 = 3, not above 3
    assert res.report.counts["below_score_margin"] == 2  # p0 and p3 (3 - 1 = 2)
    res, _ = _run("all_above_margin", margin=1.0)
    got = sorted((r["prompt"], r["chosen"], r["rejected"]) for r in res.rows)
    # with the length judge "nan" is a 3-letter reply: p3 scores 1 3 2 3
    assert got == [
        ("p0", "aaa", "a"),
        ("p0", "aaaa", "a"),
        ("p0", "aaaa", "aa"),
        ("p3", "ddd", "d"),
        ("p3", "nan", "d"),
    ]


def test_best_vs_random_is_seeded_per_prompt():
    res, _ = _run("best_vs_random", seed=0)
    again, _ = _run("best_vs_random", seed=0)
    assert res.rows == again.rows
    p0 = [r for r in res.rows if r["prompt"] == "p0"]
    assert len(p0) == 1 and p0[0]["chosen"] == "aaaa" and p0[0]["rejected"] in ("aaa", "a", "aa")
    picks = {
        next(r["rejected"] for r in _run("best_vs_random", seed=s)[0].rows if r["prompt"] == "p0")
        for s in range(12)
    }
    assert len(picks) > 1  # the pick really is random across seeds


def test_unpaired_rows_by_threshold():
    res, _ = _run("unpaired", threshold=2.5)
    assert res.kind == "unpaired"
    p0 = [(r["completion"], r["label"], r["score"]) for r in res.rows if r["prompt"] == "p0"]
    assert p0 == [("aaa", True, 3.0), ("a", False, 1.0), ("aa", False, 2.0), ("aaaa", True, 4.0)]
    assert [r["completion"] for r in res.rows if r["prompt"] == "p1"] == ["bb"]  # the same text once
    assert res.report.counts["duplicate"] == 3 and res.report.counts["empty_reply"] == 3
    assert res.rows[0]["provenance"]["threshold"] == 2.5
    assert res.rows[0]["provenance"]["sample_index"] == 0


def test_conversational_prompts_give_message_replies():
    prompt = [{"role": "user", "content": "hi"}]
    engine = FixedEngine({"x": ["a", "abc"]})
    engine.generate = lambda prompts, **kw: FixedEngine({"x": ["a", "abc"]}).generate(
        ["x"] * len(prompts), **kw
    )
    res = generate_preferences([prompt], engine, build_judge(LENGTH), k=2)
    assert res.rows[0]["chosen"] == [{"role": "assistant", "content": "abc"}]
    assert res.rows[0]["prompt"] == prompt


def test_pairwise_judge_by_round_robin():
    def prefers_longer(queries):
        out = []
        for q in queries:
            a = q.split("Reply A: ")[1].split("\n")[0]
            b = q.split("Reply B: ")[1].split("\n")[0]
            out.append("A" if len(a) > len(b) else "B" if len(b) > len(a) else "garbage")
        return out

    judge = LLMJudge(prefers_longer, name="stub")
    replies = {"q0": ["xx", "x", "xxxx", "xxx"], "q1": ["y", "y", "y", "y"]}
    res, _ = _run(judge=judge, replies=replies)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in res.rows] == [("q0", "xxxx", "x")]
    row = res.rows[0]
    assert row["score_chosen"] is None and row["provenance"]["copeland"] == [1.0, 0.0, 3.0, 2.0]
    assert res.report.counts == {"no_decided_pair": 1}
    assert (
        res.stats["comparisons"]["unparseable"] == 6
        and res.stats["comparisons"]["a"] + res.stats["comparisons"]["b"] == 6
    )
    all_pairs, _ = _run("all_above_margin", judge=judge, replies=replies)
    assert len(all_pairs.rows) == 6
    with pytest.raises(PrefoptError, match="gives verdicts, not scores"):
        _run("unpaired", judge=judge, replies=replies, threshold=0.5)


def test_position_biased_pairwise_judge_keeps_nothing_and_says_why():
    res, _ = _run(
        judge=LLMJudge(lambda qs: ["A"] * len(qs), name="always-A"), replies={"q": ["a", "bb", "ccc", "dddd"]}
    )
    assert res.rows == []
    assert res.report.counts == {"no_decided_pair": 1}
    assert res.stats["comparisons"]["inconsistent"] == 6  # every one of the 4·3/2 comparisons


class Killed(Exception):
    pass


class KilledAfter(Engine):
    """Delegates to an engine and dies on its n-th call (a run killed mid-way)."""

    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0
        self.name = inner.name

    def describe(self):
        return self.inner.describe()

    def generate(self, prompts, **kw):
        self.calls += 1
        if self.calls == self.n:
            raise Killed
        return self.inner.generate(prompts, **kw)


@pytest.fixture(scope="module")
def world_engine():
    from prefopt import world
    from prefopt.model.engines.hf import TransformersEngine
    from prefopt.model.loading import load_trained

    with world.torch_threads(1):
        model, tok = load_trained(world.reference_checkpoint("arith"))
        yield TransformersEngine(model, tok, batch_size=64)


def test_world_pairs_are_right_against_wrong_by_the_true_reward(world_engine):
    from prefopt import world

    task = world.get_task("arith")
    prompts = task.split("train")[:40]
    judge = build_judge({"type": "callable", "function": "prefopt.world:TASKS.arith.reward"})
    res = generate_preferences(prompts, world_engine, judge, k=4, temperature=[0.7, 1.2], max_new_tokens=6)
    assert res.rows
    for r in res.rows:
        assert task.reward(r["prompt"], r["chosen"]) == 1.0 and task.reward(r["prompt"], r["rejected"]) == 0.0
        assert r["provenance"]["chosen"]["temperature"] in (0.7, 1.2)
    counts = res.report.counts
    assert len(res.rows) + counts["score_tie"] + counts.get("too_few_replies", 0) == len(prompts)
    assert res.report.as_dict()["steps"][0]["rows_out"] == 40 * 8


def test_a_killed_run_resumes_without_regenerating_and_gives_the_same_rows(tmp_path, world_engine):
    from prefopt import world

    prompts = world.get_task("arith").split("train")[:30]
    judge = build_judge({"type": "callable", "function": "prefopt.world:TASKS.arith.reward"})
    kw = dict(k=4, temperature=1.0, max_new_tokens=6, seed=3, chunk_size=10)
    whole = generate_preferences(prompts, world_engine, judge, **kw)
    state = tmp_path / "state.jsonl"
    with pytest.raises(Killed):
        generate_preferences(prompts, KilledAfter(world_engine, 3), judge, state=state, **kw)
    lines = state.read_text().splitlines()
    assert len(lines) == 1 + 20  # the header and the two finished chunks
    with open(state, "a") as fh:  # a half-written line, as a kill during a write leaves
        fh.write('{"key": "20:abc", "ind')
    asked: list = []
    spy = KilledAfter(world_engine, 0)
    original = spy.generate
    spy.generate = lambda ps, **k: asked.extend(ps) or original(ps, **k)
    resumed = generate_preferences(prompts, spy, judge, state=state, **kw)
    assert asked == prompts[20:]  # finished prompts were not regenerated
    assert resumed.stats["resumed_prompts"] == 20
    assert resumed.rows == whole.rows
    assert resumed.report.as_dict()["drops"] == whole.report.as_dict()["drops"]
    finished = [
        json.loads(x)
        for x in state.read_text().splitlines()[1:]
        if x.startswith('{"key"') and x.endswith("}")
    ]
    assert len({r["key"] for r in finished}) == 30
    with pytest.raises(PrefoptError, match="written with other settings"):
        generate_preferences(prompts, world_engine, judge, state=state, **{**kw, "k": 3})
    with pytest.raises(PrefoptError, match="not in these prompts"):
        generate_preferences(prompts[::-1], world_engine, judge, state=state, **kw)


@pytest.mark.parametrize(
    "kw, where, text",
    [
        (dict(k=1), "generation.k", "a pair needs two replies"),
        (dict(prompts=[]), "prompts", "no prompts"),
        (dict(pairing="best_vs_wrost"), "pairing", 'Did you mean "best_vs_worst"'),
        (dict(pairing="unpaired"), "threshold", "needs a threshold"),
        (dict(margin=-1.0), "margin", "margin ≥ 0"),
        (dict(temperature=-1.0), "generation.temperature", "not allowed"),
    ],
)
def test_bad_input_is_exit_2_naming_the_field(kw, where, text):
    prompts = kw.pop("prompts", ["p0"])
    with pytest.raises(PrefoptError) as err:
        generate_preferences(prompts, FixedEngine(REPLIES), build_judge(LENGTH), **{"k": 4, **kw})
    assert err.value.where == where and text in str(err.value)


def test_a_judge_that_raises_names_the_prompt_index_in_the_callers_list():
    replies = {"ok": ["a", "b"], "bad": ["a", "b"]}
    with pytest.raises(PrefoptError, match="on prompt 1 "):
        generate_preferences(
            ["ok", "bad"],
            FixedEngine(replies),
            build_judge({"type": "callable", "function": "judge_helpers:raises_on_bad"}),
            k=2,
        )
