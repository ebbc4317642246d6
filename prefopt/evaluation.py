"""Evaluation of a trained policy against its starting model (``prefopt eval`` and the end of ``train``).

What is measured (``eval.json``)
--------------------------------
``preference`` — on held-out preference pairs (the recipe's eval split, ``--data FILE``, or, for the
ground-truth world without an eval split, pairs drawn from the world's held-out prompts):

* ``accuracy``: fraction of pairs whose chosen reply gets the higher **implicit reward** — the reward the
  algorithm itself optimises, the same quantity TRL logs as ``rewards/*`` during training:

  ======================  ============================================================
  dpo / ipo / kto         β · (log π(y|x) − log π_ref(y|x)), summed over completion tokens (β = τ for IPO)
  orpo                    λ · mean-token log π(y|x)  (TRL's ORPO reward; λ is TRL's ``beta``)
  simpo                   β · mean-token log π(y|x)
  ======================  ============================================================

* ``reward_margin`` (mean of r_chosen − r_rejected), ``reward_chosen``, ``reward_rejected``;
* ``logp_shift_chosen`` / ``logp_shift_rejected``: mean over pairs of log π − log π_ref of the chosen /
  rejected reply (summed over tokens, nats per sequence). Both strongly negative is the classic
  DPO failure mode (see docs/health.md, ``logp_collapse``);
* ``reference_accuracy``: the same accuracy for the starting model (for reference-free algorithms the
  implicit reward of the reference itself; for DPO/IPO/KTO the reference's implicit reward is 0 by
  definition, so it is the summed log-prob ranking of the reference instead).

``sampling`` — completions sampled from the policy (and, for the length baseline, from the reference)
on up to ``evaluation.max_prompts`` held-out prompts, ``evaluation.num_samples`` each, at
``evaluation.temperature`` with at most ``evaluation.max_new_tokens`` new tokens:

* ``kl_to_reference``: KL(π ‖ π_ref) estimated as the mean over samples y ~ π of log π(y|x) − log π_ref(y|x)
  (nats per sequence, on the exact sampled token ids, EOS included when it was sampled). The reference
  is the starting model — also for ORPO and SimPO, which train without one. ``kl_samples`` names the
  sample set; ``world`` has a second estimate (``kl_to_reference_world`` in the summary) on the
  true-reward samples, a different set, so the two differ (:func:`kl_figures` labels both);
* ``mean_length`` / ``reference_mean_length`` / ``length_ratio``: new tokens before EOS.

``world`` — when the training data comes from the ground-truth world: the true reward of the policy and
of the reference (:func:`prefopt.world.evaluate_policy`: 4 samples at temperature 1 and one greedy answer
per prompt, on ``evaluation.world_prompts`` = 300 held-out prompts — the world's own protocol, kept fixed
so lifts compare across runs) and the lift.

Everything uses prefopt's one tokenisation (:mod:`prefopt.tokenization`): the pairs are tokenised by
:func:`~prefopt.tokenization.tokenize_dataset` with the recipe's ``max_length``/``max_prompt_length``,
and generation starts from :func:`~prefopt.tokenization.encode_prompt`.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prefopt.errors import PrefoptError

log = logging.getLogger("prefopt")

SUMMED_REWARD = ("dpo", "ipo", "kto")
AVERAGE_REWARD = ("orpo", "simpo")
DEFAULT_MAX_PAIRS = 1000
DEFAULT_BATCH_SIZE = 256  # rows per forward (evaluation.batch_size)
DEFAULT_TOKEN_BUDGET = 16384  # padded tokens per forward
DEFAULT_WORLD_PROMPTS = 300  # the world's true-reward protocol (world.evaluate_policy's default)


# ------------------------------------------------------------------------------------------- log-probs
def _device(model) -> torch.device:
    return next(model.parameters()).device


def length_batches(
    lengths: Sequence[int], *, max_batch: int = DEFAULT_BATCH_SIZE, token_budget: int = DEFAULT_TOKEN_BUDGET
) -> list[list[int]]:
    """Indices grouped into batches of similar length: at most ``max_batch`` rows and ``token_budget``
    padded tokens each (a per-forward overhead dominates small models; memory large ones)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:  # ascending lengths: the row being added is the longest so far
        if cur and (len(cur) >= max_batch or (len(cur) + 1) * lengths[i] > token_budget):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@torch.no_grad()
def completion_logps(
    model,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_token_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each completion given its prompt, and the completion lengths (tokens).

    ``sequences`` holds ``(prompt_ids, completion_ids)`` exactly as training sees them (right padding,
    plain forward — :func:`prefopt.trainers.model_logps`)."""
    from prefopt.trainers import model_logps

    was_training = model.training
    model.eval()
    device = _device(model)
    result = torch.zeros(len(sequences), dtype=torch.float64)
    total = [len(p) + len(c) for p, c in sequences]
    for idx in length_batches(total, max_batch=batch_size, token_budget=token_budget):
        width = max(total[i] for i in idx)
        ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        cmask = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            p, c = list(sequences[i][0]), list(sequences[i][1])
            ids[j, : total[i]] = torch.tensor(p + c, dtype=torch.long)
            mask[j, : total[i]] = 1
            cmask[j, len(p) : total[i]] = 1
        lp = model_logps(model, ids.to(device), mask.to(device), cmask.to(device)).double().cpu()
        result[idx] = lp
    if was_training:
        model.train()
    return result, torch.tensor([len(c) for _, c in sequences], dtype=torch.float64)


# ------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[Any],
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Sample completions and keep their exact token ids.

    Returns one dict per sample: ``prompt`` (index into ``prompts``), ``prompt_ids``, ``completion_ids``
    (the sampled tokens up to and including EOS when EOS was sampled; truncated at ``max_new_tokens``
    otherwise) and ``length`` (new tokens before EOS). Generation uses
    :func:`prefopt.tokenization.encode_prompt` and the world's seeded sampling loop, so the same seed
    gives the same samples as :func:`prefopt.world.sample`."""
    from prefopt.tokenization import encode_prompt
    from prefopt.world import generate as _generate

    was_training = model.training
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = _device(model)
    gen = torch.Generator().manual_seed(seed)
    flat = [i for i in range(len(prompts)) for _ in range(num_samples)]
    encoded_prompts = [encode_prompt(tokenizer, p) for p in prompts]
    out: list[dict[str, Any]] = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        encoded = [encoded_prompts[i] for i in chunk]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, e in enumerate(encoded):  # left padding for generation
            ids[j, width - len(e) :] = torch.tensor(e, dtype=torch.long)
            mask[j, width - len(e) :] = 1
        new = _generate(model, ids.to(device), mask.to(device), max_new_tokens, temperature, gen, eos, pad)
        for i, e, row in zip(chunk, encoded, new.tolist()):
            if eos is not None and eos in row:
                k = row.index(eos)
                completion, length = row[: k + 1], k
            else:
                completion, length = row, len(row)
            out.append({"prompt": i, "prompt_ids": e, "completion_ids": completion, "length": length})
    if was_training:
        model.train()
    return out


def sampled_kl_and_length(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[Any],
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reference_lengths: bool = True,
) -> dict[str, Any]:
    """KL(π ‖ π_ref) on samples from π and mean completion lengths of π (and of π_ref).

    ``reference`` is a model, or ``None`` for no KL; a PEFT policy may pass ``"disable_adapter"`` to use
    its own adapter-disabled base as the reference (no second copy of the weights)."""
    samples = generate_completions(
        policy,
        tokenizer,
        prompts,
        num_samples=num_samples,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
    )
    res: dict[str, Any] = {
        "num_prompts": len(prompts),
        "samples_per_prompt": num_samples,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "mean_length": _mean([s["length"] for s in samples]),
        "truncated_fraction": _mean([float(s["length"] == len(s["completion_ids"])) for s in samples]),
    }
    if reference is not None:
        seqs = [(s["prompt_ids"], s["completion_ids"]) for s in samples]
        pad = tokenizer.pad_token_id
        lp, _ = completion_logps(policy, seqs, pad_token_id=pad, batch_size=batch_size)
        with _reference_context(policy, reference) as ref_model:
            lr, _ = completion_logps(ref_model, seqs, pad_token_id=pad, batch_size=batch_size)
            if reference_lengths:
                ref_samples = generate_completions(
                    ref_model,
                    tokenizer,
                    prompts,
                    num_samples=num_samples,
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                    seed=seed,
                    batch_size=batch_size,
                )
                res["reference_mean_length"] = _mean([s["length"] for s in ref_samples])
                res["length_ratio"] = _ratio(res["mean_length"], res["reference_mean_length"])
        res["kl_to_reference"] = float((lp - lr).mean())
    return res


class _reference_context:
    """``with _reference_context(policy, ref) as m`` → the reference model (adapter disabled for PEFT)."""

    def __init__(self, policy, reference):
        self.policy, self.reference, self._ctx = policy, reference, None

    def __enter__(self):
        if isinstance(self.reference, str) and self.reference == "disable_adapter":
            self._ctx = self.policy.disable_adapter()
            self._ctx.__enter__()
            return self.policy
        return self.reference

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
        return False


def _mean(xs) -> float | None:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else None


def _ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a / b)


# ------------------------------------------------------------------------------------------- rewards
def reward_definition(recipe) -> tuple[str, float, str]:
    """(kind, scale, text): 'summed' rewards are scale·(lp − lp_ref), 'average' ones scale·mean-token lp."""
    p = recipe.loss_params
    alg = recipe.algorithm
    if alg == "ipo":
        return "summed", float(p.tau), f"tau * (sum logp_policy - sum logp_ref), tau = {p.tau:g}"
    if alg in ("dpo", "kto"):
        return "summed", float(p.beta), f"beta * (sum logp_policy - sum logp_ref), beta = {p.beta:g}"
    if alg == "orpo":
        return "average", float(p.lam), f"lambda * mean-token logp_policy, lambda = {p.lam:g}"
    return "average", float(p.beta), f"beta * mean-token logp_policy, beta = {p.beta:g}"


def preference_metrics(
    policy, reference, tokenizer, recipe, pairs_tok, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> dict:
    """Implicit-reward accuracy, margins and log-prob shifts on tokenised pairs
    (``prompt_ids``/``chosen_ids``/``rejected_ids``)."""
    prompts, chosen, rejected = pairs_tok["prompt_ids"], pairs_tok["chosen_ids"], pairs_tok["rejected_ids"]
    n = len(prompts)
    pad = tokenizer.pad_token_id
    seqs = [(p, c) for p, c in zip(prompts, chosen)] + [(p, r) for p, r in zip(prompts, rejected)]
    lp, lengths = completion_logps(policy, seqs, pad_token_id=pad, batch_size=batch_size)
    lr, _ = completion_logps(reference, seqs, pad_token_id=pad, batch_size=batch_size)
    lp_c, lp_r, lr_c, lr_r = lp[:n], lp[n:], lr[:n], lr[n:]
    len_c, len_r = lengths[:n].clamp(min=1), lengths[n:].clamp(min=1)
    kind, scale, text = reward_definition(recipe)
    if kind == "summed":
        r_c, r_r = scale * (lp_c - lr_c), scale * (lp_r - lr_r)
        ref_c, ref_r = lr_c, lr_r  # the reference's own implicit reward is 0; rank by its log-probs
        ref_text = "summed logp_ref (chosen > rejected)"
    else:
        r_c, r_r = scale * lp_c / len_c, scale * lp_r / len_r
        ref_c, ref_r = scale * lr_c / len_c, scale * lr_r / len_r
        ref_text = text.replace("logp_policy", "logp_ref")
    return {
        "num_pairs": n,
        "reward_definition": text,
        "accuracy": float((r_c > r_r).double().mean()),
        "reward_margin": float((r_c - r_r).mean()),
        "reward_chosen": float(r_c.mean()),
        "reward_rejected": float(r_r.mean()),
        "logp_shift_chosen": float((lp_c - lr_c).mean()),
        "logp_shift_rejected": float((lp_r - lr_r).mean()),
        "logp_chosen": float(lp_c.mean()),
        "logp_rejected": float(lp_r.mean()),
        "reference_logp_chosen": float(lr_c.mean()),
        "reference_logp_rejected": float(lr_r.mean()),
        "reference_accuracy": float((ref_c > ref_r).double().mean()),
        "reference_accuracy_definition": ref_text,
        "mean_length_chosen": float(lengths[:n].mean()),
        "mean_length_rejected": float(lengths[n:].mean()),
    }


# ------------------------------------------------------------------------------------------- data
def as_pairs(ds, seed: int = 0):
    """A canonical eval dataset as pairs: paired data as is; unpaired (KTO) rows paired by prompt
    (desirable × undesirable, one to one). Returns ``(pairs or None, note)``."""
    from prefopt.data.schema import data_kind

    if ds is None or len(ds) == 0:
        return None, "no held-out rows"
    if data_kind(ds) == "paired":
        return ds, None
    from prefopt.data.report import DropReport
    from prefopt.data.transforms import pair

    report = DropReport("eval pairs")
    paired = pair(ds, report, mode="one_to_one", seed=seed)
    note = (
        f"unpaired held-out rows paired by prompt: {len(paired)} pairs from {len(ds)} rows "
        f"({report.dropped} rows without a counterpart)"
    )
    return (paired if len(paired) else None), note


def world_eval_pairs(task: str, n: int, seed: int):
    """Held-out preference pairs from the ground-truth world (its test prompts, never trained on)."""
    from prefopt import world

    return world.preference_dataset(task, size=n, split="test", seed=seed)


def world_test_prompts(task: str, n: int, seed: int) -> list[str]:
    from prefopt import world

    pool = world.get_task(task).split("test")
    rng = random.Random(seed)
    return pool if len(pool) <= n else rng.sample(pool, n)


def load_eval_file(path: str | Path, seed: int = 0):
    """A canonical JSONL/JSON/parquet file (paired or unpaired rows, text or messages) → canonical dataset."""
    from prefopt.data.report import DropReport
    from prefopt.data.transforms import load_source
    from prefopt.recipe import SourceSection

    p = Path(path).expanduser()
    if not p.exists():
        raise PrefoptError(
            f"eval data file {p} does not exist.",
            where="--data",
            fix="pass a JSONL file of {prompt, chosen, rejected} rows (text or messages).",
        )
    name = (
        "parquet"
        if p.suffix == ".parquet"
        else ("json" if p.name.endswith((".json", ".json.gz")) else "jsonl")
    )
    report = DropReport("--data")
    ds = load_source(
        SourceSection(source=name, path=str(p.resolve())),
        where=f"--data {p}",
        base_dir=None,
        seed=seed,
        report=report,
    )
    if report.dropped:
        log.warning("eval data %s: %s", p, report.summary())
    return ds


def recipe_eval_split(recipe, base_dir: Path | None = None):
    """The recipe's held-out split, recomputed exactly as training made it (same seed)."""
    from prefopt.data.transforms import prepare

    if not recipe.data.eval and recipe.data.eval_fraction <= 0:
        return None
    _, eval_ds, _ = prepare(
        recipe.data.train, recipe.data.eval, recipe.data, recipe.algorithm, base_dir, recipe.seed
    )
    return eval_ds


# ------------------------------------------------------------------------------------------- evaluation
def _section(recipe, name: str, default):
    return getattr(recipe.evaluation, name, default)


def evaluate_models(
    policy,
    reference,
    tokenizer,
    recipe,
    eval_ds=None,
    *,
    data_source: str | None = None,
    world_prompts: int | None = None,
) -> dict:
    """Every evaluation metric for ``policy`` against ``reference`` (the starting model).

    ``eval_ds`` is the canonical held-out dataset (paired or unpaired rows) or None; without one, a
    ground-truth-world recipe evaluates on pairs drawn from the world's held-out prompts. Caps come
    from ``recipe.evaluation``. Returns the dict written to ``eval.json``."""
    from prefopt.tokenization import tokenize_dataset
    from prefopt.train import world_task_of

    ev = recipe.evaluation
    seed = recipe.seed
    max_prompts = ev.max_prompts
    max_pairs = _section(recipe, "max_pairs", DEFAULT_MAX_PAIRS)
    batch_size = _section(recipe, "batch_size", DEFAULT_BATCH_SIZE)
    task = world_task_of(recipe)
    _, _, text = reward_definition(recipe)
    result: dict[str, Any] = {"algorithm": recipe.algorithm, "reward_definition": text, "notes": []}
    policy.eval()
    reference.eval()
    device = _device(policy)
    if _device(reference) != device and getattr(reference, "hf_device_map", None) is None:
        reference.to(device)  # reference_for() loads on CPU; evaluate where the policy is

    source = data_source or ("recipe eval split" if eval_ds is not None else None)
    if eval_ds is None and task is not None:
        eval_ds = world_eval_pairs(task, min(max_pairs, max_prompts), seed)
        source = f"world:{task} held-out prompts (no eval split in the recipe)"
    pairs, note = as_pairs(eval_ds, seed)
    if note:
        result["notes"].append(note)

    if pairs is not None:
        if len(pairs) > max_pairs:
            pairs = pairs.select(range(max_pairs))
            result["notes"].append(
                f"preference metrics on the first {max_pairs} held-out pairs (evaluation.max_pairs)"
            )
        t = recipe.training
        tok, _ = tokenize_dataset(
            pairs, "paired", tokenizer, t.get("max_length"), t.get("max_prompt_length"), None
        )
        result["preference"] = {
            "source": source,
            **preference_metrics(policy, reference, tokenizer, recipe, tok, batch_size=batch_size),
        }
    else:
        result["preference"] = None
        result["notes"].append(
            "no held-out preference pairs: pass --data FILE, set data.eval_fraction or data.eval"
        )

    # prompts for the sampling metrics: the held-out prompts, else the world's test prompts
    prompts: list[Any] = []
    if pairs is not None:
        seen: dict[str, Any] = {}
        for p in pairs["prompt"]:
            seen.setdefault(json.dumps(p, sort_keys=True), p)
        prompts = list(seen.values())
        if len(prompts) > max_prompts:
            prompts = random.Random(seed).sample(prompts, max_prompts)
    elif task is not None:
        prompts = world_test_prompts(task, max_prompts, seed)
    if prompts:
        prompts_from = "held-out" if pairs is not None else f"world:{task} test"
        result["sampling"] = sampled_kl_and_length(
            policy,
            reference,
            tokenizer,
            prompts,
            num_samples=ev.num_samples,
            temperature=ev.temperature,
            max_new_tokens=ev.max_new_tokens,
            seed=seed,
            batch_size=batch_size,
        )
        result["sampling"]["prompts_from"] = prompts_from
    else:
        result["sampling"] = None

    if task is not None:
        from prefopt import world

        with torch.no_grad():
            n = int(world_prompts or _section(recipe, "world_prompts", DEFAULT_WORLD_PROMPTS))
            pol = world.evaluate_policy(policy, tokenizer, task, reference=reference, num_prompts=n)
            ref = world.evaluate_policy(reference, tokenizer, task, num_prompts=n)
        result["world"] = {
            "policy": pol,
            "reference": ref,
            "lift_sampled": pol["reward_sampled"] - ref["reward_sampled"],
            "lift_greedy": pol["reward_greedy"] - ref["reward_greedy"],
        }
    for fig in kl_figures(result):  # each KL estimate names the samples it was computed on
        section = result["sampling"] if fig["key"] == "kl_to_reference" else result["world"]
        section["kl_samples"] = fig["samples"]
    result["summary"] = summary_of(result)
    return result


def kl_figures(result: dict) -> list[dict[str, Any]]:
    """Every KL(policy ‖ reference) estimate of an evaluation, each with the sample set it was computed on.

    There are two, on different samples, so they differ: ``sampling`` (the held-out prompts, the
    ``evaluation:`` section's samples per prompt, temperature and token cap) and, for the ground-truth
    world, ``world`` (the true-reward samples: the world's test prompts × 4 at temperature 1). The CLI
    summary, ``prefopt eval`` and report.md all print them through this function, under these labels.
    Returns ``[{"key", "value", "samples"}]`` (``key`` as in the summary)."""
    out: list[dict[str, Any]] = []
    samp = result.get("sampling") or {}
    if samp.get("kl_to_reference") is not None:
        k = samp.get("samples_per_prompt", 1)
        out.append(
            {
                "key": "kl_to_reference",
                "value": samp["kl_to_reference"],
                "samples": f"{samp.get('num_prompts', '?')} {samp.get('prompts_from', 'held-out')} prompts × {k} "
                f"sample{'s' if k != 1 else ''} at T={samp.get('temperature', 1.0):g}, ≤ {samp.get('max_new_tokens', '?')} "
                "new tokens",
            }
        )
    world = result.get("world") or {}
    pol = world.get("policy") or {}
    if pol.get("kl_to_reference") is not None:
        out.append(
            {
                "key": "kl_to_reference_world",
                "value": pol["kl_to_reference"],
                "samples": f"the true-reward samples: {pol.get('num_prompts', '?')} world:{pol.get('task', '?')} "
                f"test prompts × {pol.get('samples_per_prompt', '?')} at T=1",
            }
        )
    return out


def summary_of(result: dict) -> dict[str, Any]:
    """The headline numbers in one flat dict (what ``prefopt eval`` prints and the report tabulates)."""
    pref = result.get("preference") or {}
    samp = result.get("sampling") or {}
    world = result.get("world") or {}
    out = {
        "preference_accuracy": pref.get("accuracy"),
        "reference_preference_accuracy": pref.get("reference_accuracy"),
        "reward_margin": pref.get("reward_margin"),
        "logp_shift_chosen": pref.get("logp_shift_chosen"),
        "logp_shift_rejected": pref.get("logp_shift_rejected"),
        "kl_to_reference": samp.get("kl_to_reference"),
        "kl_to_reference_world": (world.get("policy") or {}).get("kl_to_reference"),
        "mean_length": samp.get("mean_length"),
        "reference_mean_length": samp.get("reference_mean_length"),
        "true_reward_sampled": (world.get("policy") or {}).get("reward_sampled"),
        "reference_true_reward_sampled": (world.get("reference") or {}).get("reward_sampled"),
        "true_reward_lift_sampled": world.get("lift_sampled"),
        "true_reward_lift_greedy": world.get("lift_greedy"),
    }
    return out


def load_run_recipe(run_dir: Path):
    """The recipe of a finished run, from ``resolved.yaml``."""
    import yaml

    from prefopt.recipe import load_recipe

    path = run_dir / "resolved.yaml"
    if not path.exists():
        raise PrefoptError(
            f"{run_dir} is not a prefopt run directory (no resolved.yaml).",
            where="--run",
            fix="pass the directory `prefopt train` wrote (it holds resolved.yaml and model/).",
        )
    return load_recipe(data=yaml.safe_load(path.read_text()))


def evaluate_run(
    run_dir: str | Path,
    data: str | Path | None = None,
    *,
    write: bool = True,
    world_prompts: int | None = None,
) -> dict:
    """Evaluate a finished run: reload ``run_dir/model``, rebuild the starting model as the reference,
    evaluate on ``data`` (a canonical file) or the recipe's eval split, write ``run_dir/eval.json``.
    ``world_prompts`` overrides the number of held-out world prompts for the true reward (default 300,
    ``evaluation.world_prompts`` when the recipe has it)."""
    from prefopt import manifest
    from prefopt.models import load_trained
    from prefopt.resume import check_saved_model
    from prefopt.train import reference_for

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PrefoptError(f"run directory {run_dir} does not exist.", where="--run")
    recipe = load_run_recipe(run_dir)
    if not (run_dir / "model").is_dir():
        raise PrefoptError(
            f"{run_dir} holds no saved model (model/ is missing).",
            where="--run",
            fix="train with output.save_model: true (the default), or wait for the run to finish.",
        )
    check_saved_model(run_dir / "model")  # a damaged weight file: exit 2 naming it, not a traceback
    if data is not None:
        eval_ds, source = load_eval_file(data, recipe.seed), f"--data {data}"
    else:
        eval_ds = run_eval_split(run_dir, recipe)
        source = "recipe eval split" if eval_ds is not None else None
    policy, tokenizer = load_trained(run_dir)
    reference = reference_for(recipe)
    result = evaluate_models(
        policy, reference, tokenizer, recipe, eval_ds, data_source=source, world_prompts=world_prompts
    )
    result["run_dir"] = str(run_dir)
    if write:
        manifest.write_json(run_dir / "eval.json", result)
    return result


def run_eval_split(run_dir: Path, recipe):
    """The held-out split of a finished run, rebuilt from the data it trained on — never from other files.

    ``resolved.yaml`` names local data files by absolute path (runs written before that kept the recipe's
    relative paths, read here from the current directory). The rebuilt training set must have the
    fingerprint ``manifest.json`` recorded, else the files changed or are other files with the same
    name, and evaluating on them would be silently wrong: that is an error."""
    from prefopt import manifest
    from prefopt.data.transforms import prepare

    where = str(run_dir / "resolved.yaml")
    relative = [
        s.path
        for s in list(recipe.data.train) + list(recipe.data.eval or [])
        if s.path and not Path(s.path).expanduser().is_absolute() and (Path.cwd() / s.path).exists()
    ]
    if not recipe.data.eval and recipe.data.eval_fraction <= 0:
        return None
    try:
        train_ds, eval_ds, _ = prepare(
            recipe.data.train, recipe.data.eval, recipe.data, recipe.algorithm, None, recipe.seed
        )
    except PrefoptError as err:
        raise PrefoptError(
            f"could not rebuild the run's eval split from the data it trained on ({err}).",
            where=where,
            fix="put the data files back where resolved.yaml says, or pass --data FILE.",
        ) from None
    recorded = _recorded_fingerprint(run_dir)
    if recorded is not None and manifest.dataset_fingerprint(train_ds) != recorded:
        read = (
            f"relative paths {relative} read from {Path.cwd()}"
            if relative
            else "the files resolved.yaml names"
        )
        raise PrefoptError(
            f"the training data rebuilt from {read} is not what this run trained on (data fingerprint "
            f"{manifest.dataset_fingerprint(train_ds)}, manifest.json recorded {recorded}), so its eval split "
            "would be other rows.",
            where=where,
            fix="run `prefopt eval` from the folder the relative paths were written against (the recipe's), "
            "restore the files the run used, or pass --data FILE to evaluate on a file of your choice.",
        )
    return eval_ds


def _recorded_fingerprint(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "manifest.json").read_text()).get("data_fingerprint")
    except (OSError, ValueError):
        return None


def format_summary(result: dict) -> str:
    """A short table of the headline numbers."""
    rows = []
    samples = {f["key"]: f["samples"] for f in kl_figures(result)}
    for k, v in (result.get("summary") or summary_of(result)).items():
        if v is None:
            continue
        row = f"{k:32s} {v:10.4f}" if isinstance(v, float) else f"{k:32s} {v}"
        rows.append(row + (f"  (on {samples[k]})" if k in samples else ""))
    for note in result.get("notes") or []:
        rows.append(f"note: {note}")
    return "\n".join(rows)
