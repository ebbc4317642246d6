"""Make preference data: prompts → engine (k replies, one or several temperatures) → judge → rows.

:func:`generate_preferences` samples ``k`` replies per prompt and temperature from a generation engine,
judges them, and keeps

* ``best_vs_worst`` — one pair per prompt: the best-scored reply against the worst;
* ``best_vs_random`` — one pair per prompt: the best against a random reply scored more than
  ``margin`` below it (seeded per prompt);
* ``all_above_margin`` — every pair whose scores differ by more than ``margin``;
* ``unpaired`` — every reply as a KTO row, desirable when its score ≥ ``threshold``.

Rows are canonical (prefopt.data.schema columns) plus ``provenance``: the judge, every reply's score,
and each kept reply's temperature and sample index (and the pairing, seed and engine). Nothing is lost
silently: the :class:`~prefopt.data.report.DropReport` counts empty replies, replies the judge gave no
score, prompts left with fewer than two replies, score ties, pairs below the margin, and — for a
pairwise (LLM) judge — prompts whose deciding comparison was inconsistent or unparseable.

A pairwise judge (``llm``) ranks a prompt's replies by a round robin (every two replies compared, in
both orders): Copeland scores (wins + ½ ties) order them, and a pair is kept only when the judge's own
verdict on those two replies says the chosen one is better. ``margin`` applies to scores; for a
pairwise judge every consistent verdict counts. It cannot make unpaired rows (there is no score to
threshold).

**Resumable**: with ``state=path`` every finished prompt is appended to a JSONL file (its rows and its
drops) after each chunk of ``chunk_size`` prompts. A killed run started again with the same settings
skips the prompts already there — they are not regenerated — and, because each sample's random stream
depends only on the seed and the prompt (:func:`prefopt.model.engines.base.sample_seed`), the result equals
an uninterrupted run's. A state file written with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefopt.core.errors import PrefoptError, did_you_mean
from prefopt.data.report import REASONS, DropReport
from prefopt.data.schema import compute_prompt_id
from prefopt.judge.base import Verdict, tally
from prefopt.model.engines.base import temperatures_of

PAIRINGS = ("best_vs_worst", "best_vs_random", "all_above_margin", "unpaired")
STATE_VERSION = 1

for _reason, _text in {
    "judge_failed": "the judge gave no usable score for a generated reply (None or not finite)",
    "too_few_replies": "fewer than two usable replies were left for the prompt, so no pair can be made",
    "judge_inconsistent": "the pairwise judge's verdict on the deciding pair changed when the order was swapped",
    "judge_unparseable": "the pairwise judge's answer on the deciding pair named neither reply",
    "no_decided_pair": "the pairwise judge decided no comparison between the prompt's replies",
}.items():
    REASONS.setdefault(_reason, _text)


@dataclass
class GenerationResult:
    rows: list[dict[str, Any]]
    report: DropReport
    stats: dict[str, Any] = field(default_factory=dict)
    kind: str = "paired"


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prompt_key(index: int, prompt: Any) -> str:
    return f"{index}:{compute_prompt_id(prompt)}"


def _wrap(prompt: Any, text: str) -> Any:
    """A reply in the prompt's format: text, or a one-message assistant list for a conversation."""
    if isinstance(prompt, list):
        return [{"role": "assistant", "content": text}]
    return text


def _check(prompts, k, pairing, threshold, margin, judge) -> None:
    if pairing not in PAIRINGS:
        raise PrefoptError(
            f'unknown pairing "{pairing}".{did_you_mean(pairing, PAIRINGS)}',
            where="pairing",
            fix=f"choose one of: {', '.join(PAIRINGS)}.",
        )
    if len(prompts) == 0:
        raise PrefoptError(
            "there are no prompts to generate from.", where="prompts", fix="give at least one prompt."
        )
    if pairing != "unpaired" and (not isinstance(k, int) or k < 2):
        raise PrefoptError(
            f"k = {k!r}: a pair needs two replies per prompt.",
            where="generation.k",
            fix="use k ≥ 2 (or pairing: unpaired for one reply per prompt).",
        )
    if pairing == "unpaired":
        if threshold is None:
            raise PrefoptError(
                "pairing: unpaired labels each reply by its score and needs a threshold.",
                where="threshold",
                fix="set threshold (a reply scoring ≥ it is desirable), e.g. 0.5 for the world's 0/1 reward.",
            )
        if not judge.gives_scores:
            raise PrefoptError(
                f'the {judge.type} judge "{judge.name}" gives verdicts, not scores, so replies cannot be '
                "labelled by a threshold.",
                where="pairing",
                fix="use a score judge (callable, reward_model, ensemble) for unpaired rows, or a paired pairing.",
            )
    if margin < 0:
        raise PrefoptError(f"margin = {margin}.", where="margin", fix="use a margin ≥ 0.")


# ------------------------------------------------------------------------------------------ state file
def _read_state(path: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    records: dict[str, dict[str, Any]] = {}
    header = None
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1 or all(not x.strip() for x in lines[n + 1 :]):
                # the half-written last line of a killed run: cut it off (appending after it would
                # corrupt the next record); that prompt is redone
                with open(path, "r+b") as fh:
                    fh.truncate(sum(len(x.encode("utf-8")) + 1 for x in lines[:n]))
                break
            raise PrefoptError(
                f"line {n + 1} of the state file is not JSON.",
                where=str(path),
                fix="delete the state file to start over (finished prompts will be regenerated).",
            ) from None
        if header is None:
            header = obj
            if obj.get("fingerprint") != fingerprint:
                raise PrefoptError(
                    "the state file was written with other settings (k, temperatures, judge, pairing, seed "
                    "or engine), so its finished prompts cannot be reused.",
                    where=str(path),
                    fix="resume with the settings it was written with, or use a new state path.",
                )
            continue
        records[obj["key"]] = obj
    return records


def _append(path: Path, objs: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for obj in objs:
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


# ------------------------------------------------------------------------------------------ one prompt
def _pair_row(prompt, ci, ri, replies, scores, meta, source) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "chosen": _wrap(prompt, replies[ci]["text"]),
        "rejected": _wrap(prompt, replies[ri]["text"]),
        "score_chosen": scores[ci] if meta["scored"] else None,
        "score_rejected": scores[ri] if meta["scored"] else None,
        "source": source,
        "provenance": {
            **meta["common"],
            "chosen": {k: replies[ci][k] for k in ("temperature", "sample_index")},
            "rejected": {k: replies[ri][k] for k in ("temperature", "sample_index")},
            "scores": scores,
        },
    }


def _score_pairs(pairing, scores, margin, rng) -> tuple[list[tuple[int, int]], str | None]:
    """Pairs (chosen index, rejected index) from scores, or the reason none was kept."""
    n = len(scores)
    best = max(range(n), key=lambda i: (scores[i], -i))
    worst = min(range(n), key=lambda i: (scores[i], i))
    if scores[best] == scores[worst]:
        return [], "score_tie"
    if pairing == "best_vs_worst":
        if scores[best] - scores[worst] <= margin:
            return [], "below_score_margin"
        return [(best, worst)], None
    if pairing == "best_vs_random":
        lower = [i for i in range(n) if scores[best] - scores[i] > margin]
        if not lower:
            return [], "below_score_margin"
        return [(best, rng.choice(lower))], None
    pairs = [(i, j) for i in range(n) for j in range(n) if scores[i] - scores[j] > margin]
    return (pairs, None) if pairs else ([], "below_score_margin")


def _round_robin(judge, prompt, replies) -> tuple[dict[tuple[int, int], Verdict], list[float]]:
    n = len(replies)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    verdicts = judge.compare(
        [prompt] * len(pairs), [replies[i] for i, _ in pairs], [replies[j] for _, j in pairs]
    )
    copeland = [0.0] * n
    out = {}
    for (i, j), v in zip(pairs, verdicts):
        out[(i, j)] = v
        if v.winner == "a":
            copeland[i] += 1
        elif v.winner == "b":
            copeland[j] += 1
        elif v.winner == "tie":
            copeland[i] += 0.5
            copeland[j] += 0.5
    return out, copeland


def _direct(verdicts, i, j) -> str | None:
    """'i' / 'j' / 'tie' / a no-verdict reason for the comparison of replies i and j."""
    v = verdicts[(i, j)] if (i, j) in verdicts else verdicts[(j, i)]
    first, second = (i, j) if (i, j) in verdicts else (j, i)
    if v.winner is None:
        return f"judge_{v.reason}" if v.reason in ("inconsistent", "unparseable") else "judge_failed"
    if v.winner == "tie":
        return "score_tie"
    return "i" if (first if v.winner == "a" else second) == i else "j"


def _verdict_pairs(pairing, verdicts, copeland, rng) -> tuple[list[tuple[int, int]], str | None]:
    n = len(copeland)
    if pairing == "all_above_margin":
        pairs = []
        for (i, j), v in sorted(verdicts.items()):
            if v.winner == "a":
                pairs.append((i, j))
            elif v.winner == "b":
                pairs.append((j, i))
        return (pairs, None) if pairs else ([], "no_decided_pair")
    best = max(range(n), key=lambda i: (copeland[i], -i))
    if pairing == "best_vs_worst":
        worst = min(range(n), key=lambda i: (copeland[i], i))
        if copeland[best] == copeland[worst]:
            return [], "score_tie" if all(v.winner == "tie" for v in verdicts.values()) else "no_decided_pair"
        d = _direct(verdicts, best, worst)
        return ([(best, worst)], None) if d == "i" else ([], d if d != "j" else "judge_inconsistent")
    beaten = [j for j in range(n) if j != best and _direct(verdicts, best, j) == "i"]
    if not beaten:
        return [], "no_decided_pair"
    return [(best, rng.choice(beaten))], None


def _process_prompt(index, prompt, completions, judge, scores, settings, source) -> dict:
    """The record of one prompt: its rows and its drops (reply-level and prompt-level)."""
    reply_drops: list[str] = []
    kept: list[dict[str, Any]] = []
    kept_scores: list[float] = []
    for c, s in zip(completions, scores):
        if not c.text.strip():
            reply_drops.append("empty_reply")
        elif judge.gives_scores and s is None:
            reply_drops.append("judge_failed")
        else:
            kept.append({"text": c.text, "temperature": c.temperature, "sample_index": c.sample_index})
            kept_scores.append(s)
    pairing = settings["pairing"]
    common = {
        "judge": judge.name,
        "pairing": pairing,
        "seed": settings["seed"],
        "engine": settings["engine"],
    }
    rng = random.Random(f"{settings['seed']}|{_prompt_key(index, prompt)}")
    rows: list[dict[str, Any]] = []
    prompt_drop = None
    stats: dict[str, Any] = {}
    if pairing == "unpaired":
        seen = set()
        for rep, s in zip(kept, kept_scores):
            if rep["text"] in seen:
                reply_drops.append("duplicate")
                continue
            seen.add(rep["text"])
            rows.append(
                {
                    "prompt": prompt,
                    "completion": _wrap(prompt, rep["text"]),
                    "label": bool(s >= settings["threshold"]),
                    "score": s,
                    "source": source,
                    "provenance": {
                        **common,
                        "threshold": settings["threshold"],
                        "temperature": rep["temperature"],
                        "sample_index": rep["sample_index"],
                        "scores": kept_scores,
                    },
                }
            )
    elif len(kept) < 2:
        prompt_drop = "too_few_replies"
    else:
        if judge.gives_scores:
            pairs, prompt_drop = _score_pairs(pairing, kept_scores, settings["margin"], rng)
            meta = {"scored": True, "common": common}
            row_scores = kept_scores
        else:
            rr, copeland = _round_robin(judge, prompt, [r["text"] for r in kept])
            stats["comparisons"] = tally(list(rr.values()))
            pairs, prompt_drop = _verdict_pairs(pairing, rr, copeland, rng)
            meta = {"scored": False, "common": {**common, "copeland": copeland}}
            row_scores = copeland
        seen_pairs = set()
        for ci, ri in pairs:
            key = (kept[ci]["text"], kept[ri]["text"])
            if key[0] == key[1]:
                stats.setdefault("pair_drops", []).append("identical_chosen_rejected")
                continue
            if key in seen_pairs:
                stats.setdefault("pair_drops", []).append("duplicate")
                continue
            seen_pairs.add(key)
            rows.append(_pair_row(prompt, ci, ri, kept, row_scores, meta, source))
        if pairs and not rows and prompt_drop is None:
            prompt_drop = stats["pair_drops"][0]
    return {
        "key": _prompt_key(index, prompt),
        "index": index,
        "replies": len(completions),
        "reply_drops": reply_drops,
        "prompt_drop": prompt_drop,
        "rows": rows,
        "stats": stats,
    }


# ------------------------------------------------------------------------------------------ the pipeline
def generate_preferences(
    prompts: Sequence[Any],
    engine,
    judge,
    *,
    k: int = 4,
    temperature: float | Sequence[float] = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    pairing: str = "best_vs_worst",
    margin: float = 0.0,
    threshold: float | None = None,
    state: str | Path | None = None,
    chunk_size: int = 64,
    source: str = "generated",
) -> GenerationResult:
    """Sample, judge and pair (see the module docstring). Returns rows, the drop report and stats."""
    prompts = list(prompts)
    _check(prompts, k, pairing, threshold, margin, judge)
    temps = temperatures_of(temperature)
    settings = {
        "v": STATE_VERSION,
        "k": k,
        "temperatures": temps,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "pairing": pairing,
        "margin": margin,
        "threshold": threshold,
        "judge": judge.describe(),
        "engine": engine.describe().get("engine"),
        "rng": engine.describe().get("rng"),
    }
    fingerprint = _fingerprint(settings)
    state_path = Path(state) if state is not None else None
    done: dict[str, dict[str, Any]] = {}
    if state_path is not None:
        done = _read_state(state_path, fingerprint)
        keys = {_prompt_key(i, p) for i, p in enumerate(prompts)}
        stale = sorted(set(done) - keys)
        if stale:
            raise PrefoptError(
                f"the state file holds {len(stale)} finished prompt(s) that are not in these prompts "
                f"(first: index {stale[0].split(':')[0]}), so it belongs to another prompt list.",
                where=str(state_path),
                fix="resume with the same prompts in the same order, or use a new state path.",
            )
        if not state_path.exists() or state_path.stat().st_size == 0:
            _append(state_path, [{"fingerprint": fingerprint, "settings": settings}])
    todo = [i for i, p in enumerate(prompts) if _prompt_key(i, p) not in done]
    records: dict[int, dict[str, Any]] = {r["index"]: r for r in done.values()}
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        outs = engine.generate(
            [prompts[i] for i in chunk], k=k, temperature=temps, max_new_tokens=max_new_tokens, seed=seed
        )
        flat_p = [prompts[i] for i, row in zip(chunk, outs) for c in row if c.text.strip()]
        flat_r = [c.text for row in outs for c in row if c.text.strip()]
        flat_i = [i for i, row in zip(chunk, outs) for c in row if c.text.strip()]
        flat_scores = judge.score(flat_p, flat_r, indices=flat_i) if judge.gives_scores and flat_r else []
        it = iter(flat_scores)
        new = []
        for i, row in zip(chunk, outs):
            scores = [next(it) if (judge.gives_scores and c.text.strip()) else None for c in row]
            new.append(_process_prompt(i, prompts[i], row, judge, scores, settings, source))
        for rec in new:
            records[rec["index"]] = rec
        if state_path is not None:
            _append(state_path, new)
    return _assemble(prompts, records, pairing, k * len(temps), len(done), source)


def _assemble(prompts, records, pairing, per_prompt, resumed, source) -> GenerationResult:
    report = DropReport(where=f"generate ({source})")
    ordered = [records[i] for i in range(len(prompts))]
    n_replies = sum(r["replies"] for r in ordered)
    report.step("generate", len(prompts), n_replies, detail=f"prompts → replies ({per_prompt} per prompt)")
    kept_replies = 0
    for r in ordered:
        for reason in r["reply_drops"]:
            if reason != "duplicate":
                report.drop(reason, r["index"], detail="a reply of this prompt (index = prompt index)")
        kept_replies += r["replies"] - sum(x != "duplicate" for x in r["reply_drops"])
    report.step("judge replies", n_replies, kept_replies, detail="replies kept")
    rows: list[dict[str, Any]] = []
    comparisons: Counter[str] = Counter()
    for r in ordered:
        if r["prompt_drop"]:
            report.drop(r["prompt_drop"], r["index"])
        for reason in r["stats"].get("pair_drops", []):
            report.flag(f"pair_{reason}", r["index"])
        for reason in (x for x in r["reply_drops"] if x == "duplicate"):
            report.drop(reason, r["index"], detail="the same reply text again (index = prompt index)")
        comparisons.update(r["stats"].get("comparisons", {}))
        rows.extend(r["rows"])
    if pairing == "unpaired":
        report.step("label", kept_replies, len(rows), detail="replies → rows, label = score ≥ threshold")
    else:
        report.step(
            "pair",
            len(prompts),
            len(rows),
            detail=f"prompts → rows ({pairing}); drops: prompts without a row",
        )

    for row in rows:
        row["prompt_id"] = compute_prompt_id(row["prompt"])
    stats: dict[str, Any] = {"prompts": len(prompts), "resumed_prompts": resumed, "rows": len(rows)}
    if comparisons:
        stats["comparisons"] = dict(comparisons)
        report.note(
            "pairwise judge comparisons: "
            + ", ".join(f"{k} {v}" for k, v in sorted(comparisons.items()) if v)
            + " (inconsistent and unparseable comparisons give no verdict)"
        )
    return GenerationResult(rows, report, stats, kind="unpaired" if pairing == "unpaired" else "paired")
