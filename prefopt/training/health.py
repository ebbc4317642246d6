"""Training-health warnings: a ``TrainerCallback`` watching TRL's logged metrics (see docs/health.md).

Each warning is logged (``logging.getLogger("prefopt").warning``) and written to ``metrics.jsonl`` as

    {"event": "health", "warning": "<id>", "step": 40, <the numbers that triggered it>, "advice": "..."}

once per *episode*: it fires when its condition becomes true and re-arms only after the condition has
been false at a later log. A warning whose id is in ``health.stop_on`` (default: ``nonfinite``) also
stops training (``control.should_training_stop``) after the current step.

Warnings (thresholds from the recipe's ``health:`` section):

``margin_stuck``   |rewards/margins| < ``margin_stuck_abs`` for ``margin_stuck_steps`` consecutive logs
                   while the loss fell over those logs.
``logp_collapse``  chosen and rejected log-probs both fallen by more than ``-logp_collapse_per_token``
                   nats per token. DPO/IPO/KTO: against the reference, from TRL's rewards (β · summed
                   log-ratio) divided by β and by the training data's mean chosen / rejected reply length
                   in tokens, so a 3-token reply that lost 2 nats counts as much as a 300-token reply that
                   lost 200. ORPO/SimPO (no reference; TRL logs per-token averages): against their first
                   logged values. ``logp_collapse`` adds an optional bound in nats per sequence.
``desirable_falling`` KTO only: the desirable replies' log-ratio against the reference (TRL's
                   ``rewards/chosen`` / β, per token by the data's mean desirable reply length), averaged over
                   the last ``DESIRABLE_WINDOW`` logs, below ``desirable_falling_per_token``: the update of
                   the undesirable term outweighs the desirable term, which asks for the opposite.
``overfit``        needs evidence: an eval split evaluated during training. At an evaluation, the eval
                   loss has risen more than ``overfit_eval_rise`` (relative) above its best while the
                   train loss has kept falling since that best evaluation. Without an eval split it never
                   fires (a train loss near zero alone says nothing about generalisation).
``kl_high``        KL(policy ‖ reference) > ``kl_max`` (only when set). KTO: TRL's logged ``kl``. DPO/IPO:
                   the proxy |rewards/chosen + rewards/rejected| / (2β) — the mean log-ratio
                   log π/π_ref of the training completions, nats/sequence (TRL's rewards are β·log-ratio).
                   With the probe on and a reference available, also the KL estimated on samples.
``length_drift``   |L − L_ref| / L_ref > ``length_drift`` where L is the mean completion length sampled by
                   the probe and L_ref the starting model's on the same prompts (probe only).
``nonfinite``      NaN/inf in the loss or in the KL (logged, proxy or sampled).

The probe (``health.probe_every`` > 0 steps; off by default): at train start and then at the first log
at least ``probe_every`` steps after the previous probe, sample ``probe_prompts`` held-out prompts
(temperature 1, fixed seed, ``probe_max_new_tokens``) and measure the mean completion length and, when
a reference is at hand (the trainer's ``ref_model``, the adapter-disabled base of a PEFT policy, or a
``reference_model`` passed in), the sampled KL. It runs on every process (identical inputs and seed,
so identical results — required under ZeRO-3/FSDP, where a forward needs every rank) and writes
``{"event": "probe", ...}`` records to metrics.jsonl from rank 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from prefopt.config.algorithms import DPO, names_where, spec_or_none
from prefopt.core.errors import PrefoptError, did_you_mean
from prefopt.model.generation import sampled_kl_and_length
from prefopt.world import heldout_prompts, task_of

log = logging.getLogger("prefopt")

WARNINGS = (
    "margin_stuck",
    "logp_collapse",
    "desirable_falling",
    "overfit",
    "kl_high",
    "length_drift",
    "nonfinite",
)

ADVICE = {
    "margin_stuck": (
        "the loss falls but the chosen/rejected reward margin does not move: the preference term is not "
        "learning (for ORPO/KTO the NLL/KL term is doing the work). Raise the learning rate or β, check that "
        "chosen and rejected differ (data_report.json), and that the pairs are not mislabelled."
    ),
    "logp_collapse": (
        "both chosen and rejected log-probs are falling: the policy pushes probability mass away from all "
        "data, the classic DPO failure (outputs degrade even as the margin grows). Lower the learning rate, "
        "raise β, try IPO, or add an NLL term on chosen (ORPO, or SimPO's loss.sft_weight)."
    ),
    "desirable_falling": (
        "KTO's desirable replies have become less likely than under the reference, while its desirable term "
        "asks for the opposite: the undesirable term dominates the shared update, and the policy loses mass on "
        "the answers the data calls good (on the second world of docs/world.md the sampled true reward fell "
        "below the starting model's). Lower the learning rate, raise loss.desirable_weight (λ_D; the paper's "
        "rule allows λ_D·n_D : λ_U·n_U up to 4:3), or raise β."
    ),
    "overfit": (
        "the held-out loss is rising while the training loss keeps falling: the policy is fitting the training "
        "pairs, not the preference. Stop at the best evaluation (load_best_model_at_end), train fewer epochs or "
        "at a lower learning rate, use a larger β, or IPO (its loss has a finite optimum)."
    ),
    "kl_high": (
        "the policy has drifted far from the reference. Raise β (DPO/IPO/KTO), lower the learning rate or "
        "stop earlier; compare the true/held-out metrics at this checkpoint."
    ),
    "length_drift": (
        "sampled completions are much longer/shorter than the reference's: a length exploit (DPO favours "
        "longer chosen replies) or degeneration. Consider SimPO/IPO (length-normalised), a length-balanced "
        "dataset, or a larger β."
    ),
    "nonfinite": (
        "the loss or KL is NaN/inf. Lower the learning rate, enable gradient clipping (max_grad_norm), use "
        "bf16 instead of fp16, and check the data for empty completions."
    ),
}

# Defaults of the fields this callback reads beyond the original HealthSection (see docs/health.md).
FIELD_DEFAULTS: dict[str, Any] = {
    "margin_stuck_abs": 0.01,
    "margin_stuck_steps": 10,
    "logp_collapse_per_token": -0.5,
    "logp_collapse": None,
    "desirable_falling_per_token": -0.1,
    "overfit_eval_rise": 0.1,
    "kl_max": None,
    "length_drift": 0.5,
    "stop_on": ["nonfinite"],
    "probe_every": 0,
    "probe_prompts": 8,
    "probe_max_new_tokens": 64,
}

AVERAGED_LOGPS = tuple(sorted(names_where(lambda s: s.averaged_logps)))  # TRL logs per-token averages
DESIRABLE_WINDOW = 10  # logs averaged by desirable_falling (one batch's desirable rows are noisy)
# desirable_falling re-arms only once the mean is back above this fraction of its threshold (hysteresis:
# a 10-log mean hovering at −0.1 fired 7 times in one second-world run without it)
DESIRABLE_REARM = 0.5


def check_stop_on(ids, where: str = "health.stop_on") -> list[str]:
    out = []
    for wid in ids or []:
        if wid not in WARNINGS:
            raise PrefoptError(
                f'unknown health warning "{wid}".{did_you_mean(str(wid), WARNINGS)} Warnings: {", ".join(WARNINGS)}.',
                where=where,
            )
        out.append(wid)
    return out


def _num(v) -> float | None:
    """A logged value as a float (TRL logs floats; some trainers log 0-d tensors; metrics.jsonl strings)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        return None


def beta_of(recipe) -> float | None:
    """β of the reference-based losses (τ for IPO): TRL's rewards are β · log-ratio."""
    spec = spec_or_none(recipe.algorithm)
    if spec is None or not spec.uses_reference:
        return None
    return float(getattr(recipe.loss_params, spec.scale_param))


ONLINE_KL = "online/kl"
"""The sampled KL an online trainer logs each step (:mod:`prefopt.training.online`)."""

RLHF_KL = "rlhf/kl"
"""The sampled KL of RLOO/GRPO's completions, nats per completion (TRL's per-token ``kl`` × the mean
completion length; :mod:`prefopt.studies.rlhf`)."""


def kl_budget(recipe) -> dict[str, Any]:
    """``online.kl_budget`` as health settings: ``kl_max`` (the smaller of it and ``health.kl_max``) and
    ``kl_high`` among the stopping warnings; nothing when the recipe sets no budget."""
    budget = getattr(getattr(recipe, "online", None), "kl_budget", None)
    if budget is None:
        return {}
    kl_max = budget if recipe.health.kl_max is None else min(budget, recipe.health.kl_max)
    stop_on = list(recipe.health.stop_on)
    return {"kl_max": kl_max, "stop_on": stop_on if "kl_high" in stop_on else [*stop_on, "kl_high"]}


def has_rewards_kl_proxy(algorithm: str) -> bool:
    """Whether TRL's logged rewards give a KL proxy (:attr:`prefopt.config.algorithms.AlgorithmSpec.rewards_kl_proxy`)."""
    spec = spec_or_none(algorithm)
    return spec is not None and spec.rewards_kl_proxy


def completion_lengths(train_tok) -> tuple[float, float] | None:
    """Mean reply length in tokens of the tokenised training rows: (chosen, rejected) for pairs,
    (desirable, undesirable) for unpaired rows — the lengths TRL's summed log-probs run over."""
    if train_tok is None or not len(train_tok):
        return None
    cols = train_tok.column_names
    if "chosen_ids" in cols and "rejected_ids" in cols:
        c = [len(x) for x in train_tok["chosen_ids"]]
        r = [len(x) for x in train_tok["rejected_ids"]]
    elif "completion_ids" in cols and "label" in cols:
        c, r = [], []
        for ids, label in zip(train_tok["completion_ids"], train_tok["label"]):
            (c if label else r).append(len(ids))
    else:
        return None
    mean = lambda xs: sum(xs) / len(xs) if xs else 1.0  # noqa: E731
    return mean(c), mean(r)


def probe_prompts_for(recipe, eval_ds=None, train_ds=None, n: int | None = None) -> list[Any]:
    """Up to ``n`` distinct prompts for the probe: the held-out split, else the world's test prompts,
    else the first training prompts."""
    import json

    n = n or int(getattr(recipe.health, "probe_prompts", FIELD_DEFAULTS["probe_prompts"]))

    def distinct(ds) -> list[Any]:
        seen: dict[str, Any] = {}
        for p in ds.select(range(min(len(ds), 50 * n)))["prompt"]:
            seen.setdefault(json.dumps(p, sort_keys=True), p)
            if len(seen) >= n:
                break
        return list(seen.values())

    if eval_ds is not None and len(eval_ds):
        return distinct(eval_ds)
    task = task_of(recipe)
    if task is not None:
        return heldout_prompts(task, n, recipe.seed)
    if train_ds is not None and len(train_ds):
        return distinct(train_ds)
    return []


class HealthCallback(TrainerCallback):
    """Watch TRL's logged metrics and warn (and optionally stop) on the failure modes in docs/health.md.

    ``health_section`` is the recipe's :class:`prefopt.config.recipe.HealthSection` (fields it lacks take the
    defaults in :data:`FIELD_DEFAULTS`; keyword arguments override both), ``algorithm`` the recipe's
    algorithm, ``metrics_writer`` a function taking one record dict (``MetricsJsonlCallback.write``).
    ``beta`` (β, τ for IPO) is needed for the DPO/IPO KL proxy and the log-ratio collapse check;
    ``completion_lengths`` (mean chosen/desirable and rejected/undesirable reply lengths in tokens, from the
    training data: :func:`completion_lengths`) turns summed log-ratios into nats per token; the probe
    needs ``tokenizer`` (or the trainer's ``processing_class``) and ``probe_prompts``.
    """

    def __init__(
        self,
        health_section=None,
        algorithm: str = DPO,
        metrics_writer: Callable[[dict], None] | None = None,
        *,
        beta: float | None = None,
        probe_prompts: list[Any] | None = None,
        tokenizer=None,
        reference_model=None,
        seed: int = 0,
        completion_lengths: tuple[float, float] | None = None,
        **overrides,
    ):
        unknown = set(overrides) - set(FIELD_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown HealthCallback option(s): {sorted(unknown)}")
        cfg = {}
        for k, default in FIELD_DEFAULTS.items():
            cfg[k] = overrides[k] if k in overrides else getattr(health_section, k, default)
        cfg["stop_on"] = check_stop_on(cfg["stop_on"])
        self.cfg = cfg
        self.algorithm = algorithm
        self.write = metrics_writer
        self.beta = beta
        self.probe_prompts = list(probe_prompts or [])
        self.tokenizer = tokenizer
        self.reference_model = reference_model
        self.seed = seed
        self.completion_lengths = completion_lengths
        self.fired: list[dict] = []  # every emitted warning record (also for tests and summaries)
        self._active: dict[str, bool] = {}
        self._margin_streak: list[tuple[float, float | None]] = []
        self._first_logps: tuple[float, float] | None = None
        self._desirable: list[float] = []  # recent desirable log-ratios per token (KTO)
        self._train_losses: list[float] = []  # recent train losses (for the overfit check)
        self._best_eval: tuple[float, float | None] | None = None  # (eval loss, train loss then)
        self._last_probe_step: int | None = None
        self._ref_length: float | None = None
        self._probe_kl: float | None = None

    @classmethod
    def from_recipe(cls, recipe, metrics_writer, **kwargs) -> HealthCallback:
        """The callback for a recipe: thresholds from ``recipe.health``, β from the loss, seed."""
        kwargs.setdefault("beta", beta_of(recipe))
        kwargs.setdefault("seed", recipe.seed)
        kwargs.update(kl_budget(recipe))
        return cls(recipe.health, recipe.algorithm, metrics_writer, **kwargs)

    def attach(self, trainer) -> HealthCallback:
        """Take the reference model and tokenizer from a built trainer (for the probe's KL)."""
        if self.reference_model is None and getattr(trainer, "ref_model", None) is not None:
            self.reference_model = trainer.ref_model
        if self.tokenizer is None:
            self.tokenizer = getattr(trainer, "processing_class", None)
        return self

    # ------------------------------------------------------------------ emitting
    def _emit(self, wid: str, state, control, numbers: dict[str, Any], message: str) -> None:
        stop = wid in self.cfg["stop_on"]
        rec = {"event": "health", "warning": wid, "step": state.global_step, **numbers, "advice": ADVICE[wid]}
        if stop:
            rec["stopped_training"] = True
            control.should_training_stop = True  # on every rank: the inputs (gathered metrics) are identical
        self.fired.append(rec)
        if state.is_world_process_zero:
            log.warning(
                "health: %s at step %d: %s%s Advice: %s",
                wid,
                state.global_step,
                message,
                " Training stops (health.stop_on)." if stop else "",
                ADVICE[wid],
            )
            if self.write is not None:
                self.write({k: _jsonable(v) for k, v in rec.items()})

    def _episode(
        self,
        wid: str,
        condition: bool | None,
        state,
        control,
        numbers: dict,
        message: str,
        *,
        recovered: bool | None = None,
    ) -> None:
        """Fire once when ``condition`` becomes true; re-arm when it is false again (None: no information).
        ``recovered`` (optional) is a stricter re-arm condition: a rolling mean that hovers at the threshold
        would otherwise fire at every crossing, so the episode ends only once it has moved clearly back."""
        if condition is None:
            return
        if condition and not self._active.get(wid):
            self._emit(wid, state, control, numbers, message)
        if condition:
            self._active[wid] = True
        elif recovered is None or recovered:
            self._active[wid] = False

    # ------------------------------------------------------------------ callbacks
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.tokenizer is None:
            self.tokenizer = processing_class
        if self._probe_enabled() and model is not None and self._ref_length is None:
            # the starting model's mean length (before any update) is the length baseline
            res = self._sample(model, with_kl=False)
            self._ref_length = res["mean_length"]
            self._last_probe_step = state.global_step
            if state.is_world_process_zero and self.write is not None:
                self.write(
                    {
                        "event": "probe",
                        "step": state.global_step,
                        "mean_length": self._ref_length,
                        "reference_mean_length": self._ref_length,
                        "num_prompts": len(self.probe_prompts),
                    }
                )

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or any(str(k).startswith("eval_") for k in logs):
            return
        if "loss" not in logs and not any("/" in str(k) or k == "kl" for k in logs):
            return  # the end-of-training summary (train_loss, train_runtime, ...)
        loss = _num(logs.get("loss"))
        margin = _num(logs.get("rewards/margins"))
        lc, lr = _num(logs.get("logps/chosen")), _num(logs.get("logps/rejected"))
        rc, rr = _num(logs.get("rewards/chosen")), _num(logs.get("rewards/rejected"))

        probe = None
        if self._probe_enabled() and model is not None and self._probe_due(state.global_step):
            probe = self._run_probe(model, state)

        kl, kl_source = self._kl(logs, probe)
        self._check_nonfinite(loss, kl, kl_source, state, control)
        if loss is not None and not math.isfinite(loss):
            return  # the other checks are meaningless on NaN numbers
        self._check_margin(margin, loss, state, control)
        self._check_logps(lc, lr, rc, rr, state, control)
        self._check_desirable(rc, rr, state, control)
        if loss is not None:
            self._train_losses = [*self._train_losses[-4:], loss]
        if self.cfg["kl_max"] is not None and kl is not None and math.isfinite(kl):
            self._episode(
                "kl_high",
                kl > self.cfg["kl_max"],
                state,
                control,
                {"kl": kl, "kl_source": kl_source, "kl_max": self.cfg["kl_max"]},
                f"KL {kl:.3f} ({kl_source}) above health.kl_max = {self.cfg['kl_max']:g}.",
            )
        if probe is not None and self._ref_length:
            drift = (probe["mean_length"] - self._ref_length) / self._ref_length
            self._episode(
                "length_drift",
                abs(drift) > self.cfg["length_drift"],
                state,
                control,
                {
                    "mean_length": probe["mean_length"],
                    "reference_mean_length": self._ref_length,
                    "relative_change": drift,
                    "threshold": self.cfg["length_drift"],
                },
                f"mean completion length {probe['mean_length']:.1f} vs {self._ref_length:.1f} for the "
                f"reference ({drift:+.0%}, threshold ±{self.cfg['length_drift']:.0%}).",
            )

    # ------------------------------------------------------------------ checks
    def _check_nonfinite(self, loss, kl, kl_source, state, control):
        bad = {}
        if loss is not None and not math.isfinite(loss):
            bad["loss"] = str(loss)
        if kl is not None and not math.isfinite(kl):
            bad["kl"] = str(kl)
            bad["kl_source"] = kl_source
        if loss is None and kl is None:
            return
        self._episode(
            "nonfinite",
            bool(bad),
            state,
            control,
            bad,
            "non-finite " + ", ".join(f"{k} = {v}" for k, v in bad.items() if k != "kl_source") + ".",
        )

    def _check_margin(self, margin, loss, state, control):
        if margin is None:
            return
        if abs(margin) >= self.cfg["margin_stuck_abs"]:
            self._margin_streak = []
            self._episode("margin_stuck", False, state, control, {}, "")
            return
        self._margin_streak.append((margin, loss))
        n = self.cfg["margin_stuck_steps"]
        if len(self._margin_streak) < n:
            return
        window = self._margin_streak[-n:]
        first_loss, last_loss = window[0][1], window[-1][1]
        if first_loss is None or last_loss is None:
            return
        falling = last_loss < first_loss
        self._episode(
            "margin_stuck",
            falling,
            state,
            control,
            {
                "reward_margin": margin,
                "consecutive_logs": len(self._margin_streak),
                "loss_start": first_loss,
                "loss_now": last_loss,
                "threshold": self.cfg["margin_stuck_abs"],
            },
            f"|reward margin| = {abs(margin):.4g} < {self.cfg['margin_stuck_abs']:g} for "
            f"{len(self._margin_streak)} logs while the loss fell {first_loss:.4f} → {last_loss:.4f}.",
        )

    def _logp_shifts(self, lc, lr, rc, rr) -> tuple[float, float, str] | None:
        """(chosen shift, rejected shift, against what), nats per token, or None without information."""
        lens = self.completion_lengths
        summed = self.algorithm not in AVERAGED_LOGPS
        if summed and lens is None:
            return None  # summed log-probs and no reply lengths: no per-token figure to judge
        if summed and self.beta and rc is not None and rr is not None:
            if not (math.isfinite(rc) and math.isfinite(rr)):
                return None
            return rc / self.beta / max(lens[0], 1.0), rr / self.beta / max(lens[1], 1.0), "reference"
        if lc is None or lr is None or not (math.isfinite(lc) and math.isfinite(lr)):
            return None
        if self._first_logps is None:
            self._first_logps = (lc, lr)
            return None
        dc, dr = lc - self._first_logps[0], lr - self._first_logps[1]
        if summed:  # summed log-probs without rewards: per token by the reply lengths
            dc, dr = dc / max(lens[0], 1.0), dr / max(lens[1], 1.0)
        return dc, dr, "first log"

    def _check_logps(self, lc, lr, rc, rr, state, control):
        shifts = self._logp_shifts(lc, lr, rc, rr)
        if shifts is None:
            return
        dc, dr, against = shifts
        thr = self.cfg["logp_collapse_per_token"]
        collapsed = dc < thr and dr < thr
        seq = self.cfg.get("logp_collapse")
        lens = self.completion_lengths
        if seq is not None and lens and not collapsed:
            collapsed = dc * lens[0] < seq and dr * lens[1] < seq
        self._episode(
            "logp_collapse",
            collapsed,
            state,
            control,
            {
                "shift_chosen_per_token": dc,
                "shift_rejected_per_token": dr,
                "against": against,
                "mean_reply_tokens": list(lens) if lens else None,
                "logp_chosen": lc,
                "logp_rejected": lr,
                "threshold_per_token": thr,
            },
            f"chosen log-prob moved {dc:+.2f} and rejected {dr:+.2f} nats/token against the {against} "
            f"(threshold {thr:g}).",
        )

    def _check_desirable(self, rc, rr, state, control):
        """``desirable_falling`` (KTO): the mean desirable log-ratio per token over the last logs below the
        threshold. TRL's KTO logs ``rewards/chosen`` = β · (log π − log π_ref) of the desirable rows."""
        thr = self.cfg["desirable_falling_per_token"]
        lens = self.completion_lengths
        spec = spec_or_none(self.algorithm)
        unpaired = spec is not None and spec.data_kind == "unpaired"  # desirable / undesirable rows (KTO)
        if not unpaired or thr is None or not self.beta or lens is None or rc is None:
            return
        if not math.isfinite(rc):
            return
        self._desirable = [*self._desirable[-(DESIRABLE_WINDOW - 1) :], rc / self.beta / max(lens[0], 1.0)]
        if len(self._desirable) < DESIRABLE_WINDOW:
            return
        mean = sum(self._desirable) / len(self._desirable)
        rejected = rr / self.beta / max(lens[1], 1.0) if rr is not None and math.isfinite(rr) else None
        self._episode(
            "desirable_falling",
            mean < thr,
            state,
            control,
            {
                "shift_desirable_per_token": mean,
                "shift_desirable_per_sequence": mean * lens[0],
                "shift_undesirable_per_token": rejected,
                "window_logs": DESIRABLE_WINDOW,
                "mean_reply_tokens": list(lens),
                "threshold_per_token": thr,
            },
            f"the desirable replies' log-prob is {mean:+.2f} nats/token ({mean * lens[0]:+.2f} per reply) "
            f"against the reference over the last {DESIRABLE_WINDOW} logs (threshold {thr:g}).",
            recovered=mean >= DESIRABLE_REARM * thr,
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """``overfit``: the eval loss risen above its best while the train loss kept falling."""
        ev = _num((metrics or {}).get("eval_loss"))
        if ev is None or not math.isfinite(ev):
            return
        train_now = self._train_losses[-1] if self._train_losses else None
        if self._best_eval is None or ev < self._best_eval[0]:
            self._best_eval = (ev, train_now)
            self._episode("overfit", False, state, control, {}, "")
            return
        best, train_then = self._best_eval
        rise = (ev - best) / max(abs(best), 1e-8)
        train_falling = train_now is not None and train_then is not None and train_now < train_then
        self._episode(
            "overfit",
            rise > self.cfg["overfit_eval_rise"] and train_falling,
            state,
            control,
            {
                "eval_loss": ev,
                "best_eval_loss": best,
                "relative_rise": rise,
                "train_loss": train_now,
                "train_loss_at_best": train_then,
                "threshold": self.cfg["overfit_eval_rise"],
            },
            f"eval loss {ev:.4f} is {rise:+.0%} above its best {best:.4f} while the train loss fell "
            f"{train_then:.4f} → {train_now:.4f}.",
        )

    # ------------------------------------------------------------------ KL
    def _kl(self, logs: dict, probe: dict | None) -> tuple[float | None, str | None]:
        """The KL signal of this log: sampled (probe) > KTO's logged kl > DPO/IPO rewards proxy."""
        candidates: list[tuple[float, str]] = []
        if probe is not None and probe.get("kl_to_reference") is not None:
            candidates.append((probe["kl_to_reference"], "sampled"))
        for key, source in ((ONLINE_KL, "sampled_online"), (RLHF_KL, "sampled_rlhf")):
            online = _num(logs.get(key))
            if online is not None:  # the trainer's own samples: the KL estimate, no proxy needed
                return (online, source) if not candidates else max([*candidates, (online, source)])
        k = _num(logs.get("kl"))
        if k is not None:
            candidates.append((k, "kto_logged_kl"))
        rc, rr = _num(logs.get("rewards/chosen")), _num(logs.get("rewards/rejected"))
        if has_rewards_kl_proxy(self.algorithm) and self.beta and rc is not None and rr is not None:
            candidates.append((abs(rc + rr) / (2 * self.beta), "rewards_proxy"))
        if not candidates:
            return None, None
        for v, src in candidates:  # a non-finite signal wins (nonfinite), else the largest
            if not math.isfinite(v):
                return v, src
        return max(candidates, key=lambda c: c[0])

    # ------------------------------------------------------------------ probe
    def _probe_enabled(self) -> bool:
        return (
            int(self.cfg["probe_every"] or 0) > 0 and bool(self.probe_prompts) and self.tokenizer is not None
        )

    def _probe_due(self, step: int) -> bool:
        return self._last_probe_step is None or step - self._last_probe_step >= int(self.cfg["probe_every"])

    def _reference_for_probe(self, model):
        if self.reference_model is not None:
            return self.reference_model
        try:
            from peft import PeftModel

            if isinstance(model, PeftModel):
                return "disable_adapter"
        except ImportError:  # pragma: no cover - peft is a dependency
            pass
        return None

    def _sample(self, model, with_kl: bool) -> dict:
        ref = self._reference_for_probe(model) if with_kl else None
        return sampled_kl_and_length(
            model,
            ref,
            self.tokenizer,
            self.probe_prompts,
            num_samples=1,
            temperature=1.0,
            max_new_tokens=int(self.cfg["probe_max_new_tokens"]),
            seed=self.seed,
            reference_lengths=False,
        )

    def _run_probe(self, model, state) -> dict:
        res = self._sample(model, with_kl=True)
        self._last_probe_step = state.global_step
        rec = {
            "event": "probe",
            "step": state.global_step,
            "mean_length": res["mean_length"],
            "reference_mean_length": self._ref_length,
            "num_prompts": len(self.probe_prompts),
        }
        if res.get("kl_to_reference") is not None:
            rec["kl_sampled"] = res["kl_to_reference"]
        if state.is_world_process_zero and self.write is not None:
            self.write({k: _jsonable(v) for k, v in rec.items()})
        return res


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
