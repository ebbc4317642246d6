"""Transforms between canonical datasets, and :func:`prepare`, the recipe's whole data pipeline.

Every transform takes the drop report and records a step (rows in, rows out, drops by reason):

* :func:`unpair` — pairs → desirable/undesirable rows, interleaved (chosen, rejected, chosen, ...;
  TRL's ``unpair_preference_dataset`` puts every True before every False within each map batch),
  ``prompt_id``, ``source`` and scores kept;
* :func:`pair` — unpaired rows → pairs, grouped by ``prompt_id``; ``one_to_one`` pairs the i-th
  desirable with the i-th undesirable row of the group (so ``pair(unpair(x)) == x``), ``all`` makes
  every desirable × undesirable pair; rows left without a counterpart are dropped (``no_counterpart``);
* :func:`dedupe` — exact duplicates (same prompt, replies and label) → ``duplicate``; :func:`prepare`
  runs it on the records as the sources give them, before ``transform`` (see ``_load_all``);
* :func:`filter_score_margin` — ``score_chosen - score_rejected < min_margin`` → ``below_score_margin``;
* :func:`split_by_prompt` — a held-out split by prompt group, so no prompt is in both splits;
* :func:`render_chat_template` — conversational → text with the model's chat template.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, Features, concatenate_datasets

from prefopt.config.algorithms import ALGORITHMS
from prefopt.core.errors import PrefoptError
from prefopt.data.registry import get_source
from prefopt.data.report import DropReport
from prefopt.data.schema import (
    COLUMNS,
    compute_prompt_id,
    data_format,
    data_kind,
    dataset_from_table,
    features,
)
from prefopt.data.tokenization import render_prompt

ALGORITHM_KINDS = {name: spec.data_kind for name, spec in ALGORITHMS.items()}


def _table(ds: Dataset) -> pa.Table:
    """The dataset's rows (indices mapping applied) as one Arrow table."""
    table = ds.with_format("arrow")[:] if len(ds) else ds.data.table.slice(0, 0)
    return table if isinstance(table, pa.Table) else pa.table(table)


def _extra_columns(ds: Dataset, kind: str) -> list[str]:
    return [c for c in ds.column_names if c not in COLUMNS[kind]]


def _out_features(ds: Dataset, kind: str, fmt: str) -> Features:
    feats = features(kind, fmt)
    for col in ds.column_names:
        if col not in feats and col not in COLUMNS["paired"] + COLUMNS["unpaired"]:
            feats[col] = ds.features[col]
    return feats


def _require_kind(ds: Dataset, kind: str, what: str) -> str:
    actual = data_kind(ds)
    if actual != kind:
        raise PrefoptError(f"{what} needs {kind} rows but got {actual} ones.")
    return data_format(ds)


# ------------------------------------------------------------------------------------------- unpair
def unpair(ds: Dataset, report: DropReport) -> Dataset:
    """Each pair → a ``label=True`` row (chosen) followed by a ``label=False`` row (rejected)."""
    fmt = _require_kind(ds, "paired", "unpair")
    t = _table(ds)
    n = t.num_rows
    dup = pa.array([i // 2 for i in range(2 * n)], type=pa.int64())
    both = pa.array([i // 2 + (n if i % 2 else 0) for i in range(2 * n)], type=pa.int64())

    def interleave(a: str, b: str) -> pa.Array:
        return pa.concat_arrays([t.column(a).combine_chunks(), t.column(b).combine_chunks()]).take(both)

    cols: dict[str, Any] = {
        "prompt": t.column("prompt").take(dup),
        "completion": interleave("chosen", "rejected"),
        "label": pa.array([i % 2 == 0 for i in range(2 * n)], type=pa.bool_()),
        "prompt_id": t.column("prompt_id").take(dup),
        "source": t.column("source").take(dup),
        "score": interleave("score_chosen", "score_rejected"),
    }
    for col in _extra_columns(ds, "paired"):
        cols[col] = t.column(col).take(dup)
    feats = _out_features(ds, "unpaired", fmt)
    out = dataset_from_table(pa.table(cols), feats)
    report.step("unpair", n, len(out), detail="each pair -> a desirable and an undesirable row, interleaved")
    return out


# ------------------------------------------------------------------------------------------- pair
def pair(ds: Dataset, report: DropReport, mode: str = "one_to_one", seed: int = 0) -> Dataset:
    """Group unpaired rows by ``prompt_id`` and pair desirable with undesirable rows.

    ``one_to_one``: the i-th desirable row with the i-th undesirable row of its group; when a group
    has more of one label, which extra rows stay unpaired is drawn with ``seed`` (the rest keep
    their order). ``all``: every desirable × undesirable combination. Rows without a counterpart
    are dropped as ``no_counterpart``; pairs whose two replies are identical (one completion
    labelled both ways) as ``identical_chosen_rejected``.
    """
    if mode not in ("one_to_one", "all"):
        raise PrefoptError(f'pair mode must be "one_to_one" or "all", got {mode!r}.', where="data.pair_mode")
    fmt = _require_kind(ds, "unpaired", "pair")
    t = _table(ds)
    pids = t.column("prompt_id").to_pylist()
    labels = t.column("label").to_pylist()
    groups: dict[str, tuple[list[int], list[int]]] = {}
    for i, (pid, label) in enumerate(zip(pids, labels)):
        groups.setdefault(pid, ([], []))[0 if label else 1].append(i)
    rng = random.Random(seed)
    d_idx: list[int] = []
    u_idx: list[int] = []
    for good, bad in groups.values():
        if not good or not bad:
            for i in good or bad:
                report.drop("no_counterpart", i, "no row of the opposite label shares this prompt")
            continue
        if mode == "all":
            for g in good:
                for b in bad:
                    d_idx.append(g)
                    u_idx.append(b)
            continue
        k = min(len(good), len(bad))
        if len(good) != len(bad):
            longer = good if len(good) > len(bad) else bad
            keep = set(rng.sample(range(len(longer)), k))
            for j, i in enumerate(longer):
                if j not in keep:
                    report.drop("no_counterpart", i, "its group has more rows of this label")
            chosen_side = [i for j, i in enumerate(longer) if j in keep]
            if longer is good:
                good = chosen_side
            else:
                bad = chosen_side
        d_idx.extend(good[:k])
        u_idx.extend(bad[:k])
    completions = t.column("completion")
    c = completions.take(pa.array(d_idx, type=pa.int64()))
    r = completions.take(pa.array(u_idx, type=pa.int64()))
    same = [a == b for a, b in zip(c.to_pylist(), r.to_pylist())]
    keep_pos = list(range(len(d_idx)))
    if any(same):
        keep_pos = [p for p, s in enumerate(same) if not s]
        for p, s in enumerate(same):
            if s:
                report.drop(
                    "identical_chosen_rejected",
                    d_idx[p],
                    "the same completion is labelled desirable and undesirable",
                )
    d = pa.array([d_idx[p] for p in keep_pos], type=pa.int64())
    u = pa.array([u_idx[p] for p in keep_pos], type=pa.int64())
    cols: dict[str, Any] = {
        "prompt": t.column("prompt").take(d),
        "chosen": completions.take(d),
        "rejected": completions.take(u),
        "prompt_id": t.column("prompt_id").take(d),
        "source": t.column("source").take(d),
        "score_chosen": t.column("score").take(d),
        "score_rejected": t.column("score").take(u),
    }
    for col in _extra_columns(ds, "unpaired"):
        cols[col] = t.column(col).take(d)
    out = dataset_from_table(pa.table(cols), _out_features(ds, "paired", fmt))
    report.step(f"pair ({mode})", len(ds), len(out), detail="grouped by prompt_id")
    return out


# ------------------------------------------------------------------------------------------- filters
def _content_keys(ds: Dataset) -> list[str]:
    kind = data_kind(ds)
    cols = ["prompt", "chosen", "rejected"] if kind == "paired" else ["prompt", "completion", "label"]
    keys: list[str] = []
    for batch in ds.select_columns(cols).iter(batch_size=2000):
        for values in zip(*(batch[c] for c in cols)):
            blob = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
            keys.append(hashlib.sha256(blob.encode("utf-8")).hexdigest())
    return keys


def duplicate_indices(ds: Dataset, seen: set[str] | None = None) -> list[int]:
    """Indices of rows that repeat an earlier row exactly (prompt, replies, label). ``seen``: content keys
    already kept (from earlier sources of the same kind), updated in place."""
    seen = set() if seen is None else seen
    dups = []
    for i, key in enumerate(_content_keys(ds)):
        if key in seen:
            dups.append(i)
        else:
            seen.add(key)
    return dups


def dedupe(ds: Dataset, report: DropReport, seen: set[str] | None = None) -> Dataset:
    """Drop exact duplicates (the first occurrence is kept). ``seen``: content keys of rows kept from
    earlier sources of the same kind (shared across sources, updated in place)."""
    dups = duplicate_indices(ds, seen)
    for i in dups:
        report.drop("duplicate", i)
    if dups:
        drop = set(dups)
        ds = ds.select([i for i in range(len(ds)) if i not in drop])
    report.step("dedupe", len(ds) + len(dups), len(ds))
    return ds


def filter_score_margin(ds: Dataset, min_margin: float, report: DropReport) -> Dataset:
    """Keep pairs with ``score_chosen - score_rejected >= min_margin``."""
    if data_kind(ds) != "paired":
        raise PrefoptError(
            "min_score_margin applies to pairs, but the data is unpaired.",
            where="data.min_score_margin",
            fix="remove min_score_margin (unpaired rows have one score each), or filter before unpairing "
            "(prefopt does this itself when data.transform is unpair).",
        )
    t = _table(ds)
    sc = t.column("score_chosen").to_pylist()
    sr = t.column("score_rejected").to_pylist()
    if all(a is None or b is None for a, b in zip(sc, sr)) and len(sc):
        raise PrefoptError(
            "min_score_margin is set but no row has both score_chosen and score_rejected.",
            where="data.min_score_margin",
            fix="remove min_score_margin, or use a source that carries scores (the UltraFeedback ones, or map "
            "score_chosen/score_rejected columns).",
        )
    keep = []
    for i, (a, b) in enumerate(zip(sc, sr)):
        if a is None or b is None:
            report.drop("missing_score", i)
        elif a - b < min_margin:
            report.drop("below_score_margin", i, f"{a:g} - {b:g} < {min_margin:g}")
        else:
            keep.append(i)
    out = ds.select(keep) if len(keep) != len(ds) else ds
    report.step(f"min_score_margin {min_margin:g}", len(ds), len(out))
    return out


def split_by_prompt(ds: Dataset, eval_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """``(train, eval)`` with ``eval_fraction`` of the prompt groups held out; no prompt in both.

    The held-out groups depend only on the set of prompt ids and the seed, not on row order."""
    if not 0 < eval_fraction < 1:
        raise PrefoptError(
            f"eval_fraction = {eval_fraction} must be between 0 and 1.", where="data.eval_fraction"
        )
    pids = _table(ds).column("prompt_id").to_pylist()
    groups = sorted(set(pids))
    if len(groups) < 2:
        raise PrefoptError(
            f"cannot hold out {eval_fraction:.0%} of the data by prompt: it has only {len(groups)} distinct prompt(s).",
            where="data.eval_fraction",
            fix="add more data, give an explicit data.eval source, or set eval_fraction: 0.",
        )
    n_eval = min(len(groups) - 1, max(1, round(eval_fraction * len(groups))))
    rng = random.Random(seed)
    rng.shuffle(groups)
    held = set(groups[:n_eval])
    train_idx = [i for i, p in enumerate(pids) if p not in held]
    eval_idx = [i for i, p in enumerate(pids) if p in held]
    return ds.select(train_idx), ds.select(eval_idx)


# ------------------------------------------------------------------------------------------- rendering
def render_chat_template(ds: Dataset, tokenizer: Any, report: DropReport | None = None) -> Dataset:
    """Conversational → text with ``tokenizer``'s chat template, split exactly as prefopt's
    tokenisation splits it (prompt rendered with the generation prompt; each reply is the rest of
    the full conversation's rendering). Text data is returned unchanged. A tokenizer without a chat
    template raises a :class:`PrefoptError` saying how to add one."""

    kind = data_kind(ds)
    if data_format(ds) == "text":
        return ds
    fields = ("chosen", "rejected") if kind == "paired" else ("completion",)

    def render(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"prompt": [], "prompt_id": [], **{f: [] for f in fields}}
        for i, prompt in enumerate(batch["prompt"]):
            prompt_text = render_prompt(tokenizer, prompt)
            out["prompt"].append(prompt_text)
            out["prompt_id"].append(compute_prompt_id(prompt_text))
            for f in fields:
                full = tokenizer.apply_chat_template(list(prompt) + list(batch[f][i]), tokenize=False)
                if not full.startswith(prompt_text):
                    raise PrefoptError(
                        "the chat template renders the prompt differently alone than followed by the reply.",
                        where="model.chat_template",
                        fix="use a template whose add_generation_prompt rendering is a prefix of the full conversation.",
                    )
                out[f].append(full[len(prompt_text) :])
        return out

    feats = _out_features(ds, kind, "text")
    out = ds.map(render, batched=True, batch_size=256, features=feats, desc="chat template")
    if report is not None:
        report.step("render chat template", len(ds), len(out))
    return out


# ------------------------------------------------------------------------------------------- prepare
def canonicalize(ds: Dataset, name: str, trusted: bool = False) -> Dataset:
    """Bring a source's output to the exact canonical features (any source, including third-party
    ones returning ``Dataset.from_list`` rows): ``prompt_id`` recomputed in prefopt's form, missing
    ``source``/score columns added, messages reduced to ``{"role", "content"}``."""
    kind = data_kind(ds)
    fmt = data_format(ds)
    feats = _out_features(ds, kind, fmt)
    canonical = features(kind, fmt)
    if all(col in ds.column_names for col in canonical) and all(
        ds.features[c] == canonical[c] for c in canonical
    ):
        if trusted:  # prefopt's own sources build every row with finalize_row
            return ds
        pids = _table(ds).column("prompt_id").to_pylist()
        prompts = ds["prompt"]
        if all(p == compute_prompt_id(q) for p, q in zip(pids, prompts)):
            return ds
    score_cols = ("score_chosen", "score_rejected") if kind == "paired" else ("score",)

    def fix(batch: dict[str, list]) -> dict[str, list]:
        n = len(batch["prompt"])
        out = dict(batch)
        if fmt == "conversational":
            for col in ("prompt", *(("chosen", "rejected") if kind == "paired" else ("completion",))):
                out[col] = [[{"role": m["role"], "content": m["content"]} for m in v] for v in batch[col]]
        out["prompt_id"] = [compute_prompt_id(p) for p in out["prompt"]]
        if "source" not in batch:
            out["source"] = [name] * n
        else:
            out["source"] = [s if s else name for s in batch["source"]]
        for col in score_cols:
            if col not in batch:
                out[col] = [None] * n
        if kind == "unpaired":
            out["label"] = [bool(v) for v in batch["label"]]
        return out

    return ds.map(fix, batched=True, batch_size=1000, features=feats, desc=f"canonical form ({name})")


def _kind_for(algorithm_kind: str) -> str:
    if algorithm_kind in ("paired", "unpaired"):
        return algorithm_kind
    if algorithm_kind in ALGORITHM_KINDS:
        return ALGORITHM_KINDS[algorithm_kind]
    raise ValueError(f"algorithm_kind must be paired/unpaired or an algorithm name, got {algorithm_kind!r}")


def _spec(src: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"path": src.path, "split": src.split, "max_rows": src.max_rows}
    spec.update(src.options)
    return {k: v for k, v in spec.items() if v is not None or k in src.options}


def load_source(src: Any, *, where: str, base_dir: Path | None, seed: int, report: DropReport) -> Dataset:
    """Read one recipe ``SourceSection`` into canonical form (steps recorded in ``report``)."""

    read = get_source(src.source)
    n_steps = len(report.steps)
    try:
        ds = read(_spec(src), base_dir=base_dir, seed=seed, report=report)
    except PrefoptError as e:
        raise PrefoptError(str(e), where=where) from None
    if len(report.steps) == n_steps:  # a source that does not record its own step
        report.step(f"read {src.source}", max(report.rows_in, len(ds) + report.dropped), len(ds))
    ds = canonicalize(ds, src.source, trusted=read.__module__.startswith("prefopt.data.sources"))
    if src.max_rows is not None and len(ds) > src.max_rows:
        n = len(ds)
        ds = ds.select(range(src.max_rows))
        report.step("max_rows", n, len(ds), detail=f"first {src.max_rows} rows kept (not counted as drops)")
    return ds


def _transform_one(
    ds: Dataset,
    *,
    where: str,
    data_section: Any,
    needed: str,
    algorithm_kind: str,
    seed: int,
    report: DropReport,
) -> Dataset:
    kind = data_kind(ds)
    margin = data_section.min_score_margin
    if margin is not None and kind == "paired":
        ds = filter_score_margin(ds, margin, report)
    transform = data_section.transform
    if transform == "unpair" and kind == "paired":
        ds = unpair(ds, report)
    elif transform == "pair" and kind == "unpaired":
        ds = pair(ds, report, mode=data_section.pair_mode, seed=seed)
        if margin is not None:
            ds = filter_score_margin(ds, margin, report)
    elif margin is not None and kind == "unpaired":
        raise PrefoptError(
            "data.min_score_margin compares the scores of a pair, but this source gives unpaired rows.",
            where=where,
            fix="remove min_score_margin, or add `data.transform: pair` so rows are paired first.",
        )
    kind = data_kind(ds)
    if kind != needed:
        name = (
            algorithm_kind
            if algorithm_kind in ALGORITHM_KINDS
            else f"{'an' if needed == 'unpaired' else 'a'} {needed} algorithm"
        )
        if transform != "none":
            raise PrefoptError(
                f"data.transform: {transform} gives {kind} rows, but {name} trains on {needed} data.",
                where=where,
                fix=f"use transform: {'unpair' if needed == 'unpaired' else 'pair'} (or none if the source already "
                f"gives {needed} rows).",
            )
        if needed == "unpaired":
            fix = (
                "add `transform: unpair` under data: (each pair becomes a desirable and an undesirable row)."
            )
        else:
            fix = (
                "add `transform: pair` under data: (rows are grouped by prompt; `pair_mode: all` makes every "
                "desirable × undesirable pair)."
            )
        raise PrefoptError(
            f"{name} trains on {needed} data ({'prompt, completion, label' if needed == 'unpaired' else 'prompt, chosen, rejected'}), "
            f"but this source gives {kind} rows.",
            where=where,
            fix=fix,
        )
    return ds


def _concat(parts: list[tuple[str, Dataset]]) -> Dataset:
    if len(parts) == 1:
        return parts[0][1]
    formats = {where: data_format(ds) for where, ds in parts}
    if len(set(formats.values())) > 1:
        detail = ", ".join(f"{w}: {f}" for w, f in formats.items())
        raise PrefoptError(
            f"the sources mix text and conversational data ({detail}); one dataset must use one format.",
            where="data",
            fix="use format: conversational (or text) on the sources that offer it, so all of them match.",
        )
    kind = data_kind(parts[0][1])
    fmt = next(iter(formats.values()))
    feats = features(kind, fmt)
    for _, ds in parts:
        for col in ds.column_names:
            if col not in feats:
                feats[col] = ds.features[col]
    aligned = []
    for _, ds in parts:
        for col, feat in feats.items():
            if col not in ds.column_names:
                ds = ds.add_column(col, [None] * len(ds), feature=feat)
        aligned.append(ds.select_columns(list(feats)).cast(feats))
    return concatenate_datasets(aligned)


def _load_all(
    sources: Sequence[Any],
    *,
    where: str,
    data_section: Any,
    needed: str,
    algorithm_kind: str,
    base_dir: Path | None,
    seed: int,
    report: DropReport,
) -> Dataset:
    parts: list[tuple[str, Dataset]] = []
    # dedupe compares records as the sources give them (pairs as pairs, unpaired rows as rows), across
    # sources and before any transform: two pairs that share their correct reply are distinct records,
    # so `transform: unpair` keeps one desirable and one undesirable row for each (the label balance is
    # the pairs'), and a duplicated pair loses both of its rows together.
    seen: dict[str, set[str]] = {}
    for i, src in enumerate(sources):
        loc = f"{where}[{i}] ({src.source})"
        sub = DropReport(loc)
        ds = load_source(src, where=loc, base_dir=base_dir, seed=seed, report=sub)
        if len(ds) == 0:
            raise PrefoptError(
                f"source {src.source} ({src.path or 'no path'}) gave no usable rows.\n{sub.summary()}",
                where=loc,
                fix="check the path and the source name (`prefopt data sources`); the reasons above say why rows were dropped.",
            )
        if data_section.dedupe:
            ds = dedupe(ds, sub, seen.setdefault(data_kind(ds), set()))
        ds = _transform_one(
            ds,
            where=loc,
            data_section=data_section,
            needed=needed,
            algorithm_kind=algorithm_kind,
            seed=seed,
            report=sub,
        )
        if len(ds) == 0:
            raise PrefoptError(
                f"no rows of source {src.source} ({src.path or 'no path'}) survived the transforms.\n{sub.summary()}",
                where=loc,
            )
        for step in sub.steps:
            step["step"] = f"{loc}: {step['step']}"
        report.merge(sub)
        parts.append((loc, ds))
    return _concat(parts)


def prepare(
    train_sources: Sequence[Any],
    eval_sources: Sequence[Any] | None,
    data_section: Any,
    algorithm_kind: str,
    base_dir: Path | None,
    seed: int,
) -> tuple[Dataset, Dataset | None, DropReport]:
    """The recipe's ``data:`` block → ``(train, eval or None, report)`` in canonical form.

    Per source: read, dedupe (against the rows kept so far, records as given), (``min_score_margin`` on
    pairs), ``transform``, kind check against the algorithm. Then concatenate, shuffle (seeded) and hold
    out ``eval_fraction`` of the
    prompt groups when no ``eval`` sources are given. ``strict`` turns any drop into an error.
    """
    needed = _kind_for(algorithm_kind)
    report = DropReport("data")
    kw = dict(
        data_section=data_section, needed=needed, algorithm_kind=algorithm_kind, base_dir=base_dir, seed=seed
    )
    train = _load_all(train_sources, where="data.train", report=report, **kw)
    if data_section.shuffle:
        train = train.shuffle(seed=seed)
    eval_ds: Dataset | None = None
    if eval_sources:
        eval_report = DropReport("data.eval")
        eval_ds = _load_all(eval_sources, where="data.eval", report=eval_report, **kw)
        report.merge(eval_report)
        shared = set(_table(train).column("prompt_id").to_pylist()) & set(
            _table(eval_ds).column("prompt_id").to_pylist()
        )
        if shared:
            report.note(f"{len(shared):,} prompt(s) appear in both the train and the eval sources")
    elif data_section.eval_fraction > 0:
        n = len(train)
        train, eval_ds = split_by_prompt(train, data_section.eval_fraction, seed)
        report.step(
            "split by prompt",
            n,
            n,
            detail=f"eval_fraction {data_section.eval_fraction:g}: {len(eval_ds):,} rows held out, {len(train):,} train",
        )
    if data_section.strict:
        report.check_strict(where="data (strict: true)")
    return train, eval_ds, report
