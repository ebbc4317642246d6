"""How every study measures what it trained: :class:`Measure` (wall time, CPU time, peak memory of a
block) and :class:`WorldEvaluator` (true reward, KL to the reference and held-out preference accuracy on
the ground-truth world, the same for every point, with :class:`CompareEvaluation` its settings; with
``evaluation.judge:`` also each point's win rate against the reference, judged by that judge, and its
length-controlled figure).

Shared by the algorithm comparison (:mod:`prefopt.studies.compare`) and the studies it runs beside its
grid (:mod:`prefopt.studies.rlhf`, :mod:`prefopt.studies.iterative`).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from typing import Any

import torch
from pydantic import Field

from prefopt.config.schema import StrictModel
from prefopt.core.errors import PrefoptError
from prefopt.evaluate.judged import judge_replies, sample_replies
from prefopt.judge import build_judge
from prefopt.model.loading import load_trained
from prefopt.model.logprobs import sequence_logps
from prefopt.world import evaluate_policy, heldout_prompts, preference_rows, reference_checkpoint, task_of


class CompareEvaluation(StrictModel):
    """How every point (and the reference) is measured; the same for all of them."""

    num_prompts: int = Field(300, gt=0, description="Held-out prompts for the true reward and KL.")
    samples_per_prompt: int = Field(4, gt=0, description="Sampled completions per prompt (T = 1).")
    max_new_tokens: int = Field(8, gt=0)
    seed: int = Field(1234, description="Sampling seed (the same for every point).")
    pref_prompts: int = Field(
        300,
        ge=0,
        description="Held-out prompts the preference pairs are drawn from "
        "(world test split, up to 2 pairs each); 0 = skip.",
    )
    judge: dict[str, Any] | None = Field(
        None,
        description="A judge: block (docs/judges.md). Each point's samples on the held-out prompts are judged "
        "against the reference's (same seed, sample i against sample i): win rate and length-controlled win "
        "rate in the table. None: no win rate.",
    )


def world_task(recipe) -> str:
    task = task_of(recipe)
    if task is None:
        raise PrefoptError(
            "prefopt compare measures the true reward of the ground-truth world, but this recipe's data does "
            "not come from it.",
            where=str(recipe.source_path or "<recipe>"),
            fix="use a base recipe with `data: {train: [{source: world, task: arith, ...}]}` "
            "(configs/recipes/quickstart/*.yaml).",
        )
    return task


class Measure:
    """Wall time, process CPU time and peak memory of a block.

    Peak RSS is sampled every ``interval`` seconds by a thread (psutil, else /proc), so a peak shorter
    than that can be missed; ``ru_maxrss`` cannot be used per point because it only grows over the
    process's life. On a GPU the CUDA allocator's peak is reset and read too."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.result: dict[str, float] = {}

    @staticmethod
    def rss_bytes() -> int:
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except ImportError:  # pragma: no cover - psutil ships with the test environment
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self._stop = threading.Event()
        self._start_rss = self._peak = self.rss_bytes()
        self._t0 = time.perf_counter()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu0 = ru.ru_utime + ru.ru_stime
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self.rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.rss_bytes())
        ru = resource.getrusage(resource.RUSAGE_SELF)
        mb = 1024 * 1024
        self.result = {
            "wall_s": round(time.perf_counter() - self._t0, 2),
            "cpu_s": round(ru.ru_utime + ru.ru_stime - self._cpu0, 2),
            "peak_rss_mb": round(self._peak / mb, 1),
            "peak_rss_delta_mb": round((self._peak - self._start_rss) / mb, 1),
        }
        if torch.cuda.is_available():
            self.result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / mb, 1)
        return False


class WorldEvaluator:
    """The one measurement applied to every point (and to the reference), with the reference model and
    its log-probs on the held-out pairs computed once."""

    def __init__(self, task: str, reference, tokenizer, settings: CompareEvaluation | None = None):
        self.task, self.reference, self.tokenizer = task, reference, tokenizer
        self.settings = settings or CompareEvaluation()
        s = self.settings
        self.pairs = (
            preference_rows(task, s.pref_prompts, split="test", seed=s.seed) if s.pref_prompts else []
        )
        self._ref_lp = self._logps(reference) if self.pairs else None
        self.reference_result = self._sampling(reference, with_kl=False)
        self.reference_result["kl_to_reference"] = 0.0
        self.judge = build_judge(s.judge, where="evaluation.judge") if s.judge else None
        if self.judge is not None:
            self._judged_prompts = heldout_prompts(task, s.num_prompts, s.seed)
            self._ref_replies = self._replies(reference)
        if self._ref_lp is not None:
            lc, lr = self._ref_lp
            self.reference_result["logp_accuracy"] = float((lc > lr).double().mean())
            self.reference_result["pref_accuracy"] = None  # log π/π_ref is 0 for the reference itself

    @classmethod
    def for_task(cls, task: str, settings: CompareEvaluation | None = None) -> WorldEvaluator:
        ref, tok = load_trained(reference_checkpoint(task))
        return cls(task, ref.eval(), tok, settings)

    def _logps(self, model):
        prompts = [r["prompt"] for r in self.pairs]
        lc = sequence_logps(model, self.tokenizer, prompts, [r["chosen"] for r in self.pairs])
        lr = sequence_logps(model, self.tokenizer, prompts, [r["rejected"] for r in self.pairs])
        return lc, lr

    def _sampling(self, model, *, with_kl: bool) -> dict:
        s = self.settings
        return evaluate_policy(
            model,
            self.tokenizer,
            self.task,
            reference=self.reference if with_kl else None,
            num_prompts=s.num_prompts,
            samples_per_prompt=s.samples_per_prompt,
            seed=s.seed,
            max_new_tokens=s.max_new_tokens,
        )

    def _replies(self, model) -> list:
        s = self.settings
        return sample_replies(
            model,
            self.tokenizer,
            self._judged_prompts,
            k=s.samples_per_prompt,
            temperature=1.0,
            max_new_tokens=s.max_new_tokens,
            seed=s.seed,
        )

    def _win_rate(self, model) -> dict[str, Any]:
        """The model (position a) against the reference, sample i against sample i."""
        s = self.settings
        res, _ = judge_replies(
            self.judge,
            self._judged_prompts,
            self._replies(model),
            self._ref_replies,
            k=s.samples_per_prompt,
            seed=s.seed,
        )
        d = res.as_dict()
        return {"win_rate": d["win_rate"], "lc_win_rate": d["lc_win_rate"], "win_rate_detail": d}

    def __call__(self, model) -> dict:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = self._sampling(model, with_kl=True)
            if self._ref_lp is not None:
                lc, lr = self._logps(model)
                rc, rr = self._ref_lp
                out["pref_accuracy"] = float(((lc - rc) > (lr - rr)).double().mean())
                out["logp_accuracy"] = float((lc > lr).double().mean())
                out["pref_pairs"] = len(self.pairs)
            if self.judge is not None:
                out.update(self._win_rate(model))
        if was_training:
            model.train()
        out["eval_s"] = round(time.perf_counter() - t0, 2)
        return out
