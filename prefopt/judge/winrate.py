"""Win rate of a policy against reference replies, raw and length-controlled, with bootstrap intervals.

For each prompt the policy's reply (position a) is judged against the reference's (position b) by
any judge. A win counts 1, a tie ½, a loss 0; pairs without a verdict (inconsistent, unparseable,
failed) are left out and counted, never guessed. The **win rate** is the mean outcome.

The **length-controlled win rate** follows AlpacaEval 2's LC (Dubois et al., 2024): judges prefer
longer replies, so a policy can "win" by writing more. Regress the outcome y ∈ {0, ½, 1} on the
length difference with a logistic GLM,

    P(policy wins) = σ(θ₀ + θ₁ · tanh(Δ / sd(Δ))),   Δ = len(policy reply) − len(reference reply),

and read it at Δ = 0: LC = σ(θ₀). (AlpacaEval's GLM also has an instruction-difficulty term, fitted
across many models; with one policy and one reference it drops out.) The feature is odd in Δ, so
swapping policy and reference gives exactly 1 − LC. The fit is Newton's method on the Bernoulli
log-likelihood with soft labels and a small ridge (``l2``), which keeps θ finite when the verdicts are
fully separated by length — then LC is poorly identified; ``length_coef`` (θ₁) shows how much of the
verdict length explains.

Intervals: a seeded percentile bootstrap over pairs (``n_boot`` resamples; the tanh scale is that of
the full sample, so a resample changes only which pairs are in it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prefopt.judge.agreement import winner_of

OUTCOME = {"a": 1.0, "tie": 0.5, "b": 0.0}


@dataclass
class WinRate:
    n: int  # pairs with a verdict (wins + ties + losses)
    wins: int
    ties: int
    losses: int
    no_verdict: dict[str, int] = field(default_factory=dict)
    win_rate: float = float("nan")
    win_rate_ci: tuple[float, float] = (float("nan"), float("nan"))
    lc_win_rate: float = float("nan")
    lc_win_rate_ci: tuple[float, float] = (float("nan"), float("nan"))
    length_coef: float = float("nan")
    mean_length_delta: float = float("nan")
    confidence: float = 0.95
    n_boot: int = 0
    judge: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["win_rate_ci"] = list(self.win_rate_ci)
        d["lc_win_rate_ci"] = list(self.lc_win_rate_ci)
        return d


def _sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, iters: int = 100) -> tuple[float, float]:
    """(θ₀, θ₁) of P(y=1) = σ(θ₀ + θ₁·x) by Newton's method; ``y`` may be soft (0, ½, 1)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    X = np.stack([np.ones_like(x), x], axis=1)
    theta = np.zeros(2)
    eye = np.eye(2)
    for _ in range(iters):
        p = _sigmoid(X @ theta)
        grad = X.T @ (p - y) + l2 * theta
        w = p * (1.0 - p)
        hess = (X * w[:, None]).T @ X + l2 * eye
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def length_feature(delta: np.ndarray, scale: float | None = None) -> np.ndarray:
    """tanh(Δ / sd(Δ)) (AlpacaEval 2's length term); all zeros when every Δ is 0."""
    delta = np.asarray(delta, dtype=np.float64)
    if scale is None:
        scale = float(np.std(delta))
    if scale == 0 or not math.isfinite(scale):
        return np.zeros_like(delta)
    return np.tanh(delta / scale)


def lc_win_rate(y: Sequence[float], delta: Sequence[float], *, l2: float = 1e-3) -> tuple[float, float]:
    """(LC win rate, θ₁) of outcomes ``y`` against length differences ``delta``."""
    x = length_feature(np.asarray(delta, dtype=np.float64))
    t0, t1 = fit_logistic(x, np.asarray(y, dtype=np.float64), l2=l2)
    return float(_sigmoid(t0)), t1


def win_rate_from_verdicts(
    verdicts: Sequence[Any],
    policy_lengths: Sequence[float],
    reference_lengths: Sequence[float],
    *,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    l2: float = 1e-3,
    judge: str | None = None,
) -> WinRate:
    """Win rate and LC win rate from verdicts in which the policy is position a."""
    if not (len(verdicts) == len(policy_lengths) == len(reference_lengths)):
        raise ValueError("verdicts and lengths differ in length")
    ys, ds = [], []
    no_verdict: dict[str, int] = {}
    for v, lp, lr in zip(verdicts, policy_lengths, reference_lengths):
        w = winner_of(v)
        if w is None:
            reason = getattr(v, "reason", None) or "failed"
            no_verdict[reason] = no_verdict.get(reason, 0) + 1
            continue
        ys.append(OUTCOME[w])
        ds.append(float(lp) - float(lr))
    y, d = np.asarray(ys), np.asarray(ds)
    res = WinRate(
        n=len(ys),
        wins=int(np.sum(y == 1.0)),
        ties=int(np.sum(y == 0.5)),
        losses=int(np.sum(y == 0.0)),
        no_verdict=no_verdict,
        confidence=confidence,
        n_boot=n_boot,
        judge=judge,
    )
    if not ys:
        return res
    x = length_feature(d)
    res.win_rate = float(y.mean())
    t0, t1 = fit_logistic(x, y, l2=l2)
    res.lc_win_rate, res.length_coef = float(_sigmoid(t0)), t1
    res.mean_length_delta = float(d.mean())
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        raw, lc = np.empty(n_boot), np.empty(n_boot)
        n = len(y)
        for b in range(n_boot):
            idx = rng.integers(0, n, n)
            raw[b] = y[idx].mean()
            lc[b] = _sigmoid(fit_logistic(x[idx], y[idx], l2=l2)[0])
        lo, hi = (1 - confidence) / 2, 1 - (1 - confidence) / 2
        res.win_rate_ci = (float(np.quantile(raw, lo)), float(np.quantile(raw, hi)))
        res.lc_win_rate_ci = (float(np.quantile(lc, lo)), float(np.quantile(lc, hi)))
    return res


def win_rate(
    judge,
    prompts: Sequence[Any],
    policy_replies: Sequence[Any],
    reference_replies: Sequence[Any],
    *,
    length: Callable[[Any], float] | None = None,
    lengths: tuple[Sequence[float], Sequence[float]] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[WinRate, list]:
    """Judge ``policy_replies`` (position a) against ``reference_replies`` on the same prompts.

    Lengths are ``lengths=(policy, reference)`` when given (e.g. token counts from the engine's
    :class:`~prefopt.model.engines.base.Completion`), else ``length(reply)`` (default: characters).
    Returns the :class:`WinRate` and the verdicts."""
    if not (len(prompts) == len(policy_replies) == len(reference_replies)):
        raise ValueError("prompts, policy replies and reference replies differ in length")
    verdicts = judge.compare(prompts, policy_replies, reference_replies)
    if lengths is None:
        measure = length or (lambda r: len(r) if isinstance(r, str) else len(str(r)))
        lengths = ([measure(r) for r in policy_replies], [measure(r) for r in reference_replies])
    res = win_rate_from_verdicts(
        verdicts,
        lengths[0],
        lengths[1],
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
        judge=getattr(judge, "name", None),
    )
    return res, verdicts
