"""Agreement statistics for pairwise verdicts: is a judge (or a synthetic-data pipeline) to be trusted?

Every function takes verdicts as :class:`~prefopt.judge.base.Verdict` objects or as plain labels
(``"a"``, ``"b"``, ``"tie"``; ``None`` = no verdict). Pairs without a verdict are never guessed: they
are left out of each statistic and counted (``excluded``/``no_verdict``).

* :func:`agreement` — raw agreement and Cohen's κ between two judges on the same pairs;
  κ = (p_o − p_e) / (1 − p_e), p_e = Σ_c p₁(c)·p₂(c) over the labels {a, b, tie} (the formula of
  ``sklearn.metrics.cohen_kappa_score``); κ is NaN when p_e = 1 (both judges gave one same label
  throughout), as sklearn's is;
* :func:`accuracy` — a judge against human labels (``"a"`` or ``"b"``: which reply people preferred);
* :func:`length_bias` — among decided pairs whose replies differ in length, how often the longer one
  wins (0.5 = no preference for length);
* :func:`position_bias` — for an LLM judge asked in both orders: how often it picks position A
  among its parseable single-order answers (0.5 = none), and how often its two orders agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from prefopt.judge.base import Verdict, tally

LABELS = ("a", "b", "tie")


def winner_of(v: Any) -> str | None:
    """A Verdict or a label → ``"a"``, ``"b"``, ``"tie"`` or None."""
    w = getattr(v, "winner", v)
    if w is None:
        return None
    w = str(w).lower()
    if w not in LABELS:
        raise ValueError(f"not a verdict label: {v!r} (expected a, b, tie or None)")
    return w


def agreement(first: Sequence[Any], second: Sequence[Any]) -> dict[str, Any]:
    """Agreement and Cohen's κ of two judges' verdicts on the same pairs (both must have a verdict)."""
    if len(first) != len(second):
        raise ValueError("the two judges' verdict lists differ in length")
    pairs = [(winner_of(x), winner_of(y)) for x, y in zip(first, second)]
    both = [(x, y) for x, y in pairs if x is not None and y is not None]
    n = len(both)
    out: dict[str, Any] = {"n": n, "excluded": len(pairs) - n}
    if n == 0:
        return out | {"agreement": float("nan"), "kappa": float("nan"), "confusion": {}}
    p_o = sum(x == y for x, y in both) / n
    c1, c2 = Counter(x for x, _ in both), Counter(y for _, y in both)
    p_e = sum((c1[c] / n) * (c2[c] / n) for c in LABELS)
    kappa = (p_o - p_e) / (1 - p_e) if p_e < 1 else float("nan")
    confusion = {f"{x}|{y}": int(k) for (x, y), k in sorted(Counter(both).items())}
    return out | {"agreement": p_o, "kappa": kappa, "expected_agreement": p_e, "confusion": confusion}


def accuracy(verdicts: Sequence[Any], human: Sequence[Any]) -> dict[str, Any]:
    """A judge's accuracy on human-labelled pairs. ``human[i]`` is ``"a"`` or ``"b"``.

    ``accuracy`` = correct / decided (verdict a or b); ``accuracy_ties_half`` counts a tie as half
    right, over decided + ties; ``coverage`` = (decided + ties) / labelled pairs."""
    if len(verdicts) != len(human):
        raise ValueError("verdicts and human labels differ in length")
    n = correct = ties = decided = none = 0
    for v, h in zip(verdicts, human):
        h = winner_of(h)
        if h not in ("a", "b"):
            raise ValueError(f"a human label must be 'a' or 'b', got {h!r}")
        n += 1
        w = winner_of(v)
        if w is None:
            none += 1
        elif w == "tie":
            ties += 1
        else:
            decided += 1
            correct += w == h
    judged = decided + ties
    return {
        "n": n,
        "decided": decided,
        "correct": correct,
        "ties": ties,
        "no_verdict": none,
        "accuracy": correct / decided if decided else float("nan"),
        "accuracy_ties_half": (correct + 0.5 * ties) / judged if judged else float("nan"),
        "coverage": judged / n if n else float("nan"),
    }


def length_bias(
    verdicts: Sequence[Any],
    replies_a: Sequence[Any],
    replies_b: Sequence[Any],
    length: Callable[[Any], float] = len,
) -> dict[str, Any]:
    """How often the longer reply wins, among decided pairs (a or b) whose lengths differ.

    ``length`` measures a reply (characters by default; pass a token counter for tokens)."""
    if not (len(verdicts) == len(replies_a) == len(replies_b)):
        raise ValueError("verdicts and replies differ in length")
    n = longer = equal = 0
    for v, a, b in zip(verdicts, replies_a, replies_b):
        w = winner_of(v)
        if w not in ("a", "b"):
            continue
        la, lb = length(a), length(b)
        if la == lb:
            equal += 1
            continue
        n += 1
        longer += (w == "a") == (la > lb)
    return {
        "n": n,
        "equal_length": equal,
        "longer_wins": longer,
        "longer_win_rate": longer / n if n else float("nan"),
    }


def position_bias(verdicts: Sequence[Any]) -> dict[str, Any]:
    """An LLM judge's position bias from the per-order choices its verdicts keep (``positions``).

    ``first_position_rate``: the share of parseable, non-tie single-order answers that chose position
    A (0.5 = no bias; 1 = always the first reply). ``consistency``: the share of pairs with both orders
    parseable whose two answers named the same reply. ``inconsistent``/``unparseable``: pair counts."""
    answers = first = pairs_parsed = consistent = unparseable = inconsistent = 0
    for v in verdicts:
        positions = getattr(v, "positions", None)
        if positions is None:
            raise ValueError("position_bias needs verdicts from a judge asked in both orders (positions)")
        for p in positions:
            if p in ("A", "B"):
                answers += 1
                first += p == "A"
        if None in positions:
            unparseable += 1
            continue
        pairs_parsed += 1
        if getattr(v, "reason", None) == "inconsistent":
            inconsistent += 1
        else:
            consistent += 1
    return {
        "pairs": len(verdicts),
        "answers": answers,
        "first_position_rate": first / answers if answers else float("nan"),
        "consistency": consistent / pairs_parsed if pairs_parsed else float("nan"),
        "inconsistent": inconsistent,
        "unparseable": unparseable,
    }


def agreement_table(
    verdicts: dict[str, Sequence[Any]],
    *,
    human: Sequence[Any] | None = None,
    replies_a: Sequence[Any] | None = None,
    replies_b: Sequence[Any] | None = None,
    length: Callable[[Any], float] = len,
) -> dict[str, Any]:
    """Everything above for several judges on the same pairs: per judge its counts, accuracy on the
    human labels (when given), length bias (when the replies are given) and position bias (when its
    verdicts carry positions); per pair of judges agreement and κ."""
    out: dict[str, Any] = {"judges": {}, "pairs": {}}
    names = list(verdicts)
    for name in names:
        vs = verdicts[name]
        entry: dict[str, Any] = {"counts": tally([_as_verdict(v) for v in vs])}
        if human is not None:
            entry["human"] = accuracy(vs, human)
        if replies_a is not None and replies_b is not None:
            entry["length_bias"] = length_bias(vs, replies_a, replies_b, length)
        if vs and all(getattr(v, "positions", None) is not None for v in vs):
            entry["position_bias"] = position_bias(vs)
        out["judges"][name] = entry
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            out["pairs"][f"{x} vs {y}"] = agreement(verdicts[x], verdicts[y])
    return out


def _as_verdict(v: Any):
    if isinstance(v, Verdict):
        return v
    w = winner_of(v)
    return Verdict(w, None if w is not None else "failed")
