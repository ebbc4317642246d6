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

Everything uses prefopt's one tokenisation (:mod:`prefopt.data.tokenization`): the pairs are tokenised by
:func:`~prefopt.data.tokenization.tokenize_dataset` with the recipe's ``max_length``/``max_prompt_length``,
and generation starts from :func:`~prefopt.data.tokenization.encode_prompt`.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import torch

from prefopt.config.algorithms import get_spec, names_where
from prefopt.config.recipe import SourceSection, load_recipe
from prefopt.core.errors import PrefoptError
from prefopt.core.files import write_json
from prefopt.core.hashing import dataset_fingerprint
from prefopt.data.report import DropReport
from prefopt.data.schema import data_kind
from prefopt.data.tokenization import tokenize_dataset
from prefopt.data.transforms import load_source, pair, prepare
from prefopt.evaluate.judged import judged_section, judged_summary, perplexity
from prefopt.evaluate.kl import kl_figures
from prefopt.evaluate.reward_model import evaluate_reward_run
from prefopt.model.generation import sampled_kl_and_length
from prefopt.model.loading import load_reference, load_trained
from prefopt.model.logprobs import DEFAULT_BATCH_SIZE, completion_logps, device_of
from prefopt.training.resume import check_saved_model
from prefopt.world import evaluate_policy, heldout_pairs, heldout_prompts, task_of

log = logging.getLogger("prefopt")

SUMMED_REWARD = tuple(sorted(names_where(lambda s: not s.averaged_logps)))
AVERAGE_REWARD = tuple(sorted(names_where(lambda s: s.averaged_logps)))
DEFAULT_MAX_PAIRS = 1000
DEFAULT_WORLD_PROMPTS = 300  # the world's true-reward protocol (world.evaluate_policy's default)


# ------------------------------------------------------------------------------------------- rewards
def reward_definition(recipe) -> tuple[str, float, str]:
    """(kind, scale, text): 'summed' rewards are scale·(lp − lp_ref), 'average' ones scale·mean-token lp.

    The scale is the algorithm's ``scale_param`` (β; τ for IPO, λ for ORPO), TRL's ``beta``."""
    spec = get_spec(recipe.algorithm)
    scale = float(getattr(recipe.loss_params, spec.scale_param))
    word = spec.scale_word
    if spec.averaged_logps:
        return "average", scale, f"{word} * mean-token logp_policy, {word} = {scale:g}"
    return "summed", scale, f"{word} * (sum logp_policy - sum logp_ref), {word} = {scale:g}"


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
        "perplexity_chosen": perplexity(lp_c, lengths[:n]),
        "reference_perplexity_chosen": perplexity(lr_c, lengths[:n]),
    }


# ------------------------------------------------------------------------------------------- data
def as_pairs(ds, seed: int = 0):
    """A canonical eval dataset as pairs: paired data as is; unpaired (KTO) rows paired by prompt
    (desirable × undesirable, one to one). Returns ``(pairs or None, note)``."""
    if ds is None or len(ds) == 0:
        return None, "no held-out rows"
    if data_kind(ds) == "paired":
        return ds, None
    report = DropReport("eval pairs")
    paired = pair(ds, report, mode="one_to_one", seed=seed)
    note = (
        f"unpaired held-out rows paired by prompt: {len(paired)} pairs from {len(ds)} rows "
        f"({report.dropped} rows without a counterpart)"
    )
    return (paired if len(paired) else None), note


def load_eval_file(path: str | Path, seed: int = 0):
    """A canonical JSONL/JSON/parquet file (paired or unpaired rows, text or messages) → canonical dataset."""
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
    judge=None,
    against=None,
) -> dict:
    """Every evaluation metric for ``policy`` against ``reference`` (the starting model).

    ``eval_ds`` is the canonical held-out dataset (paired or unpaired rows) or None; without one, a
    ground-truth-world recipe evaluates on pairs drawn from the world's held-out prompts. Caps come
    from ``recipe.evaluation``. Returns the dict written to ``eval.json``: ``preference``
    (:func:`_preference_section`), ``sampling`` (:func:`_sampling_section`), ``world``
    (:func:`_world_section`), ``summary``; with a ``judge``, ``judged``: the policy's win rate against
    the reference, or against ``against`` = ``(name, model)`` (:mod:`prefopt.evaluate.judged`)."""
    task = task_of(recipe)
    _, _, text = reward_definition(recipe)
    result: dict[str, Any] = {"algorithm": recipe.algorithm, "reward_definition": text, "notes": []}
    policy.eval()
    reference.eval()
    device = device_of(policy)
    if device_of(reference) != device and getattr(reference, "hf_device_map", None) is None:
        reference.to(device)  # load_reference() loads on CPU; evaluate where the policy is
    pairs, result["preference"] = _preference_section(
        policy, reference, tokenizer, recipe, eval_ds, data_source, task, result["notes"]
    )
    result["sampling"] = _sampling_section(policy, reference, tokenizer, recipe, pairs, task)
    if judge is not None:
        name, other = against or ("reference", reference)
        result["judged"] = judged_section(policy, other, tokenizer, recipe, judge, pairs, task, against=name)
    if task is not None:
        result["world"] = _world_section(policy, reference, tokenizer, recipe, task, world_prompts)
    for fig in kl_figures(result):  # each KL estimate names the samples it was computed on
        section = result["sampling"] if fig["key"] == "kl_to_reference" else result["world"]
        section["kl_samples"] = fig["samples"]
    result["summary"] = summary_of(result)
    return result


def _preference_section(policy, reference, tokenizer, recipe, eval_ds, data_source, task, notes: list):
    """The held-out pairs (the eval split, else the world's held-out prompts) and their preference metrics
    (None without pairs). Returns ``(pairs, section)``."""
    ev, seed = recipe.evaluation, recipe.seed
    max_pairs = _section(recipe, "max_pairs", DEFAULT_MAX_PAIRS)
    source = data_source or ("recipe eval split" if eval_ds is not None else None)
    if eval_ds is None and task is not None:
        eval_ds = heldout_pairs(task, min(max_pairs, ev.max_prompts), seed)
        source = f"world:{task} held-out prompts (no eval split in the recipe)"
    pairs, note = as_pairs(eval_ds, seed)
    if note:
        notes.append(note)
    if pairs is None:
        notes.append("no held-out preference pairs: pass --data FILE, set data.eval_fraction or data.eval")
        return None, None
    if len(pairs) > max_pairs:
        pairs = pairs.select(range(max_pairs))
        notes.append(f"preference metrics on the first {max_pairs} held-out pairs (evaluation.max_pairs)")
    t = recipe.training
    tok, _ = tokenize_dataset(
        pairs, "paired", tokenizer, t.get("max_length"), t.get("max_prompt_length"), None
    )
    batch_size = _section(recipe, "batch_size", DEFAULT_BATCH_SIZE)
    return pairs, {
        "source": source,
        **preference_metrics(policy, reference, tokenizer, recipe, tok, batch_size=batch_size),
    }


def _sampling_section(policy, reference, tokenizer, recipe, pairs, task) -> dict | None:
    """KL and lengths on samples, on the held-out pairs' prompts, else the world's test prompts."""
    ev, seed = recipe.evaluation, recipe.seed
    prompts: list[Any] = []
    if pairs is not None:
        seen: dict[str, Any] = {}
        for p in pairs["prompt"]:
            seen.setdefault(json.dumps(p, sort_keys=True), p)
        prompts = list(seen.values())
        if len(prompts) > ev.max_prompts:
            prompts = random.Random(seed).sample(prompts, ev.max_prompts)
    elif task is not None:
        prompts = heldout_prompts(task, ev.max_prompts, seed)
    if not prompts:
        return None
    sampling = sampled_kl_and_length(
        policy,
        reference,
        tokenizer,
        prompts,
        num_samples=ev.num_samples,
        temperature=ev.temperature,
        max_new_tokens=ev.max_new_tokens,
        seed=seed,
        batch_size=_section(recipe, "batch_size", DEFAULT_BATCH_SIZE),
    )
    sampling["prompts_from"] = "held-out" if pairs is not None else f"world:{task} test"
    return sampling


def _world_section(policy, reference, tokenizer, recipe, task: str, world_prompts: int | None) -> dict:
    """The true reward of policy and reference on the world's held-out prompts, and the lift."""
    with torch.no_grad():
        n = int(world_prompts or _section(recipe, "world_prompts", DEFAULT_WORLD_PROMPTS))
        pol = evaluate_policy(policy, tokenizer, task, reference=reference, num_prompts=n)
        ref = evaluate_policy(reference, tokenizer, task, num_prompts=n)
    return {
        "policy": pol,
        "reference": ref,
        "lift_sampled": pol["reward_sampled"] - ref["reward_sampled"],
        "lift_greedy": pol["reward_greedy"] - ref["reward_greedy"],
    }


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
        "perplexity_chosen": pref.get("perplexity_chosen"),
        "reference_perplexity_chosen": pref.get("reference_perplexity_chosen"),
    }
    return out | judged_summary(result)


def load_run_recipe(run_dir: Path):
    """The recipe of a finished run, from ``resolved.yaml``."""
    import yaml

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
    judge=None,
    against: str | Path | None = None,
) -> dict:
    """Evaluate a finished run: reload ``run_dir/model``, rebuild the starting model as the reference,
    evaluate on ``data`` (a canonical file) or the recipe's eval split, write ``run_dir/eval.json``.
    ``world_prompts`` overrides the number of held-out world prompts for the true reward (default 300,
    ``evaluation.world_prompts`` when the recipe has it). With a ``judge``: the win rate against the
    reference, or against the model of the run ``against``."""
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
    if against is not None:
        against = _checked_run(Path(against), "--against")
    if data is not None:
        eval_ds, source = load_eval_file(data, recipe.seed), f"--data {data}"
    else:
        eval_ds = run_eval_split(run_dir, recipe)
        source = "recipe eval split" if eval_ds is not None else None
    if get_spec(recipe.algorithm).num_labels is not None:  # a reward model: its own evaluation
        return evaluate_reward_run(
            run_dir, recipe, eval_ds, data_source=source, world_prompts=world_prompts, write=write
        )
    policy, tokenizer = load_trained(run_dir)
    reference = load_reference(recipe.model, seed=recipe.seed)
    other = (str(against), load_trained(against)[0].eval()) if against is not None else None
    result = evaluate_models(
        policy,
        reference,
        tokenizer,
        recipe,
        eval_ds,
        data_source=source,
        world_prompts=world_prompts,
        judge=judge,
        against=other,
    )
    result["run_dir"] = str(run_dir)
    if write:
        write_json(run_dir / "eval.json", result)
    return result


def _checked_run(run_dir: Path, flag: str) -> Path:
    """A finished run directory with a saved model (checked before any model loads)."""
    model = run_dir / "model"
    if not model.is_dir():
        raise PrefoptError(
            f"{run_dir} holds no saved model ({model} is missing).",
            where=flag,
            fix="pass the directory `prefopt train` wrote for a finished run.",
        )
    check_saved_model(model)
    return run_dir


def run_eval_split(run_dir: Path, recipe):
    """The held-out split of a finished run, rebuilt from the data it trained on — never from other files.

    ``resolved.yaml`` names local data files by absolute path (runs written before that kept the recipe's
    relative paths, read here from the current directory). The rebuilt training set must have the
    fingerprint ``manifest.json`` recorded, else the files changed or are other files with the same
    name, and evaluating on them would be silently wrong: that is an error."""
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
    if recorded is not None and dataset_fingerprint(train_ds) != recorded:
        read = (
            f"relative paths {relative} read from {Path.cwd()}"
            if relative
            else "the files resolved.yaml names"
        )
        raise PrefoptError(
            f"the training data rebuilt from {read} is not what this run trained on (data fingerprint "
            f"{dataset_fingerprint(train_ds)}, manifest.json recorded {recorded}), so its eval split "
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
