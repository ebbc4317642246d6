"""A batched, parallel path to exactly the token ids of :func:`prefopt.data.tokenization.tokenize_dataset`.

``tokenize_dataset`` is the reference: a per-row loop that renders the prompt with the chat template
five times per pair and calls the tokenizer once per string. :func:`tokenize_dataset_fast` produces
the same ids, the same drops (same indices, same reason, same order in the report) and the same
truncation counts, by

* rendering each prompt once and each full conversation once, batched through
  ``tokenizer.apply_chat_template`` (the same call the reference makes, so the text is identical);
* tokenising in batches — and, for byte-level tokenizers without merges (the builtin offline
  tokenizer), through a lookup table: such a tokenizer maps every UTF-8 byte to one id and every
  added token to its id, so a table lookup is exact. The table is built only when the tokenizer's
  structure says so and it is checked against the tokenizer on probe strings (special tokens,
  multi-byte characters, every byte) before use; anything else uses the tokenizer itself;
* running over shards in ``num_proc`` processes with ``datasets.map``.

The identity with the reference is tested in ``tests/data/test_data_fast_tokenize.py``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, Value, concatenate_datasets

from prefopt.core.errors import PrefoptError
from prefopt.data.schema import dataset_from_table
from prefopt.data.tokenization import TruncationStats, is_messages, require_chat_template

ID_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids")
_DROP, _PTRUNC, _CTRUNC = "_prefopt_drop", "_prefopt_prompt_truncated", "_prefopt_completions_truncated"


# ------------------------------------------------------------------------------------------- encoders
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (what ByteLevel pre-tokenisation uses)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


PROBES = (
    "",
    "plain ascii text, with punctuation!?",
    "  leading and trailing spaces  \n\n\ttabs",
    "unicode: é ü 中文 🙂 \u200b",
    "<|eos|> specials <|user|>inside<|assistant|> text<|eos|><|eos",
    "<|bos|><|pad|><|system|><|tool|> <| not a token |>",
    "".join(chr(i) for i in range(1, 256)),
)


class ByteTable:
    """Exact tokenisation for byte-level BPE tokenizers with no merges (``add_special_tokens=False``)."""

    def __init__(self, lut: np.ndarray, added: dict[str, int]):
        self.lut = lut
        self.added = added
        pattern = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
        self.split = re.compile(f"({pattern})") if pattern else None

    @classmethod
    def build(cls, tokenizer: Any) -> ByteTable | None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or getattr(tokenizer, "split_special_tokens", False):
            return None
        try:
            spec = json.loads(backend.to_str())
        except Exception:  # an exotic backend that cannot serialise: use the tokenizer itself
            return None
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        if (
            model.get("type") != "BPE"
            or model.get("merges")
            or model.get("dropout")
            or model.get("byte_fallback")
            or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix")
            or spec.get("normalizer") is not None
            or pre.get("type") != "ByteLevel"
            or pre.get("add_prefix_space")
        ):
            return None
        vocab: dict[str, int] = model.get("vocab") or {}
        table = _bytes_to_unicode()
        if any(table[b] not in vocab for b in range(256)):
            return None
        if model.get("ignore_merges") and any(len(k) > 1 for k in vocab):
            return None  # a whole word found in the vocabulary would become one token
        added: dict[str, int] = {}
        for tok in spec.get("added_tokens") or []:
            if tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word"):
                return None
            added[tok["content"]] = int(tok["id"])
        lut = np.array([vocab[table[b]] for b in range(256)], dtype=np.int64)
        enc = cls(lut, added)
        own = " ".join(added) + "".join(t[:-1] + "x" + t for t in added if len(t) > 1)
        for probe in (*PROBES, own):
            if enc.encode(probe).tolist() != tokenizer(probe, add_special_tokens=False)["input_ids"]:
                return None
        return enc

    def encode(self, text: str) -> np.ndarray:
        if self.split is None:
            return self.lut[np.frombuffer(text.encode("utf-8"), dtype=np.uint8)]
        parts: list[np.ndarray] = []
        for k, piece in enumerate(self.split.split(text)):
            if k % 2:
                parts.append(np.array([self.added[piece]], dtype=np.int64))
            elif piece:
                parts.append(self.lut[np.frombuffer(piece.encode("utf-8"), dtype=np.uint8)])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class Encoder:
    """Batched ``tokenizer(texts, add_special_tokens=...)["input_ids"]`` as int64 arrays."""

    def __init__(self, tokenizer: Any, use_table: bool = True):
        self.tokenizer = tokenizer
        self.table = ByteTable.build(tokenizer) if use_table else None

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> list[np.ndarray]:
        if self.table is not None and not add_special_tokens:
            return [self.table.encode(t) for t in texts]
        if not texts:
            return []
        ids = self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in ids]


# ------------------------------------------------------------------------------------------- rendering
def render_prompts(tokenizer: Any, prompts: list[list[dict[str, str]]]) -> list[str]:
    """``render_prompt`` for a batch: generation prompt after a user/tool turn, continuation after an
    assistant turn — grouped so each kind is one batched template call."""
    out: list[str] = [""] * len(prompts)
    gen = [i for i, p in enumerate(prompts) if not (p and p[-1]["role"] == "assistant")]
    cont = [i for i, p in enumerate(prompts) if p and p[-1]["role"] == "assistant"]
    if gen:
        for i, text in zip(gen, _render(tokenizer, [prompts[i] for i in gen], add_generation_prompt=True)):
            out[i] = text
    if cont:
        for i, text in zip(cont, _render(tokenizer, [prompts[i] for i in cont], continue_final_message=True)):
            out[i] = text
    return out


def _render(tokenizer: Any, convs: list[list[dict[str, str]]], **kw: Any) -> list[str]:
    rendered = tokenizer.apply_chat_template(convs, tokenize=False, **kw)
    return [rendered] if isinstance(rendered, str) else list(rendered)


def completion_texts(tokenizer: Any, prompts: list, prompt_texts: list[str], completions: list) -> list[str]:
    full = _render(tokenizer, [list(p) + list(c) for p, c in zip(prompts, completions)])
    out = []
    for text, prefix in zip(full, prompt_texts):
        if not text.startswith(prefix):
            raise PrefoptError(
                "the chat template renders the prompt differently alone than followed by the reply, so the "
                "reply's tokens cannot be separated from the prompt's.",
                where="model.chat_template",
                fix="use a template whose add_generation_prompt rendering is a prefix of the full conversation.",
            )
        out.append(text[len(prefix) :])
    return out


# ------------------------------------------------------------------------------------------- batches
def _list_array(seqs: list[np.ndarray]) -> pa.Array:
    """``list<int32>`` (compact while results travel between processes; widened to int64 at the end)."""
    lengths = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.int32()))


def _widen(table: pa.Table) -> pa.Table:
    """Id columns as ``list<int64>``, the type ``Dataset.from_list`` gives the reference path."""
    schema = pa.schema(
        [pa.field(f.name, pa.list_(pa.int64())) if f.name.endswith("_ids") else f for f in table.schema]
    )
    return table.cast(schema)


class _BatchTokenizer:
    def __init__(self, tokenizer: Any, kind: str, max_length: int | None, max_prompt_length: int | None):
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.fields = ("chosen", "rejected") if kind == "paired" else ("completion",)
        self._encoder: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:  # built lazily so worker processes build their own
            self._encoder = Encoder(self.tokenizer)
        return self._encoder

    def __call__(self, table: pa.Table) -> pa.Table:
        tok, enc = self.tokenizer, self.encoder
        prompts = table.column("prompt").to_pylist()
        n = len(prompts)
        # prompt ids: encode_prompt's rule (rendered with the template, or text with special tokens)
        conv = [i for i in range(n) if is_messages(prompts[i])]
        text = [i for i in range(n) if not is_messages(prompts[i])]
        prompt_ids: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
        rendered: dict[int, str] = {}
        if conv:
            require_chat_template(tok)
            for i, t in zip(conv, render_prompts(tok, [prompts[i] for i in conv])):
                rendered[i] = t
            for i, ids in zip(conv, enc([rendered[i] for i in conv])):
                prompt_ids[i] = ids
        if text:
            for i, ids in zip(text, enc([prompts[i] for i in text], add_special_tokens=True)):
                prompt_ids[i] = ids
        # completion ids: encode_completion's rule (the rest of the full rendering, or text + EOS)
        reply_ids: dict[str, list[np.ndarray]] = {}
        eos = tok.eos_token_id
        for f in self.fields:
            comps = table.column(f).to_pylist()
            ids_f: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
            conv_c = [i for i in range(n) if is_messages(comps[i])]
            if any(i not in rendered for i in conv_c):
                raise PrefoptError("a conversational completion needs a conversational prompt (messages).")
            if conv_c:
                texts = completion_texts(
                    tok,
                    [prompts[i] for i in conv_c],
                    [rendered[i] for i in conv_c],
                    [comps[i] for i in conv_c],
                )
                for i, ids in zip(conv_c, enc(texts)):
                    ids_f[i] = ids
            text_c = [i for i in range(n) if not is_messages(comps[i])]
            for i, ids in zip(text_c, enc([comps[i] for i in text_c])):
                if eos is not None and (len(ids) == 0 or ids[-1] != eos):
                    ids = np.append(ids, np.int64(eos))
                ids_f[i] = ids
            reply_ids[f] = ids_f
        drop = np.zeros(n, dtype=bool)
        ptrunc = np.zeros(n, dtype=np.int64)
        ctrunc = np.zeros(n, dtype=np.int64)
        mpl, ml = self.max_prompt_length, self.max_length
        for i in range(n):  # the exact rule of prefopt.data.tokenization._truncate
            p = prompt_ids[i]
            if mpl is not None and len(p) > mpl:
                p = p[-mpl:] if mpl > 0 else p[:0]
                prompt_ids[i] = p
                ptrunc[i] = 1
            if ml is not None:
                room = ml - len(p)
                if room <= 0:
                    drop[i] = True
                    continue
                for f in self.fields:
                    c = reply_ids[f][i]
                    if len(c) > room:
                        reply_ids[f][i] = c[:room]
                        ctrunc[i] += 1
        cols = {"prompt_ids": _list_array(prompt_ids)}
        for f in self.fields:
            cols[f"{f}_ids"] = _list_array(reply_ids[f])
        cols[_DROP] = pa.array(drop)
        cols[_PTRUNC] = pa.array(ptrunc)
        cols[_CTRUNC] = pa.array(ctrunc)
        return pa.table(cols)


_SHARED: tuple[_BatchTokenizer, pa.Table, int] | None = None


def _work(bounds: tuple[int, int]) -> pa.Table:
    assert _SHARED is not None
    fn, table, batch_size = _SHARED
    start, stop = bounds
    parts = [fn(table.slice(s, min(batch_size, stop - s))) for s in range(start, stop, batch_size)]
    return pa.concat_tables(parts)


def _run(fn: _BatchTokenizer, table: pa.Table, procs: int, batch_size: int) -> pa.Table:
    """``fn`` over ``table`` in batches; with ``procs`` > 1 in forked workers that inherit the table
    (nothing is pickled on the way in; each returns one Arrow table)."""
    global _SHARED
    n = table.num_rows
    if procs <= 1 or n <= batch_size or "fork" not in mp.get_all_start_methods():
        return _work_local(fn, table, batch_size)
    chunk = max(batch_size, -(-n // (procs * 4)))
    bounds = [(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    _SHARED = (fn, table, batch_size)
    try:
        with mp.get_context("fork").Pool(procs) as pool:
            parts = pool.map(_work, bounds, chunksize=1)
    finally:
        _SHARED = None
    return pa.concat_tables(parts)


def _work_local(fn: _BatchTokenizer, table: pa.Table, batch_size: int) -> pa.Table:
    n = table.num_rows
    return pa.concat_tables([fn(table.slice(s, min(batch_size, n - s))) for s in range(0, n, batch_size)])


def default_num_proc(n_rows: int) -> int:
    """Processes worth starting: 1 below ~8k rows, else up to the usable cores (at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return 1 if n_rows < 8000 else max(1, min(cores, 8))


def tokenize_dataset_fast(
    dataset: Dataset,
    kind: str,
    tokenizer: Any,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    report: Any = None,
    *,
    num_proc: int | None = None,
    batch_size: int = 500,
) -> tuple[Dataset, TruncationStats]:
    """Same contract and output as :func:`prefopt.data.tokenization.tokenize_dataset`, batched and parallel."""
    fn = _BatchTokenizer(tokenizer, kind, max_length, max_prompt_length)
    stats = TruncationStats()
    if len(dataset) == 0:
        if report is not None and hasattr(report, "note_truncation"):
            report.note_truncation(stats.as_dict())
        raise _all_dropped(0, max_length)
    procs = default_num_proc(len(dataset)) if num_proc is None else num_proc
    keep_cols = [c for c in dataset.column_names if c not in ID_COLUMNS]
    table = dataset.select_columns(["prompt", *fn.fields]).with_format("arrow")[:]
    ids = dataset_from_table(_widen(_run(fn, table, procs, batch_size)))
    flags = ids.select_columns([_DROP, _PTRUNC, _CTRUNC]).with_format("arrow")[:]
    dropped = np.flatnonzero(flags.column(_DROP).to_numpy(zero_copy_only=False)).tolist()
    stats.prompts_truncated = int(flags.column(_PTRUNC).to_numpy().sum())
    stats.completions_truncated = int(flags.column(_CTRUNC).to_numpy().sum())
    stats.dropped_prompt_too_long = len(dropped)
    if report is not None:
        for i in dropped:
            report.drop("prompt_fills_max_length", i)
        if hasattr(report, "note_truncation"):
            report.note_truncation(stats.as_dict())
    if len(dropped) == len(dataset):
        raise _all_dropped(len(dataset), max_length)
    ids = ids.remove_columns([_DROP, _PTRUNC, _CTRUNC])
    base = dataset.select_columns(keep_cols)
    if base._indices is not None:
        base = base.flatten_indices()
    out = concatenate_datasets([base, ids], axis=1)
    if kind == "unpaired" and "label" in out.column_names and out.features["label"] != Value("bool"):
        out = out.cast_column("label", Value("bool"))
    if dropped:
        drop_set = set(dropped)
        out = out.select([i for i in range(len(out)) if i not in drop_set]).flatten_indices()
    return out, stats


def _all_dropped(n: int, max_length: int | None) -> PrefoptError:
    return PrefoptError(
        f"every example was removed by truncation: all {n} prompts fill max_length={max_length}.",
        where="training.max_length",
        fix="raise training.max_length or lower training.max_prompt_length so completions fit.",
    )


def token_lengths(
    dataset: Dataset, kind: str, tokenizer: Any, num_proc: int | None = None
) -> dict[str, np.ndarray]:
    """Untruncated token counts per row of ``prompt`` and each reply column, exactly as training
    would tokenise them (``{"prompt": ..., "chosen": ..., "rejected": ...}`` or ``completion``)."""
    fn = _BatchTokenizer(tokenizer, kind, None, None)
    if len(dataset) == 0:
        return {f: np.zeros(0, dtype=np.int64) for f in ("prompt", *fn.fields)}
    procs = default_num_proc(len(dataset)) if num_proc is None else num_proc
    table = _run(fn, dataset.select_columns(["prompt", *fn.fields]).with_format("arrow")[:], procs, 500)
    import pyarrow.compute as pc

    return {
        f: pc.list_value_length(table.column(f"{f}_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
        for f in ("prompt", *fn.fields)
    }
