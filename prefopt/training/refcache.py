"""Reference log-prob cache shared across runs (HALOs-style): compute once, reuse in every run that
would compute the same numbers — a β sweep, an algorithm comparison (``prefopt compare``), a rerun.

DPO, IPO and KTO need the reference model's summed completion log-probs of every example. They depend
only on the reference weights, the token ids, how the collator truncates them and the precision, not on
β or the loss, so a sweep recomputes identical numbers in every run. With ``reference_cache:`` the
numbers are stored on disk and TRL's ``precompute_ref_log_probs=True`` path reads them, so a run that
finds them neither recomputes them nor keeps a reference copy of the model in memory.

**Key.** sha256 over the canonical JSON of (every part is also written, readable, to ``key.json``):

* the model — for ``builtin:<name>``: name + seed + the architecture config (+ the transformers/torch
  versions that initialise it); for ``world:<task>``: the checkpoint's weight-file hashes; for a hub id
  or a local path: name + revision + the weight files' sha256 (the blob name in the Hugging Face cache,
  else hashed once and memoised by path/size/mtime); plus ``attn_implementation`` and quantization. The
  model as held in memory is fingerprinted too (a strided sample and the float64 sum/abs-sum of every
  reference tensor), so an in-memory change under an unchanged name never reuses stale numbers. With no
  identity given (a model built in code), the full reference state dict is hashed instead;
* the tokenizer (sha256 of its vocabulary/merges/normaliser JSON, its special tokens and their ids) and
  the chat template (sha256);
* the data: sha256 of the token-id columns the reference sees, in row order (``prompt_ids`` +
  ``chosen_ids``/``rejected_ids``, or ``completion_ids`` + ``KL_completion_ids``);
* ``max_length`` and ``truncation_mode`` (the collator truncates), ``max_prompt_length``;
* the dtype of the weights and the autocast precision;
* the family: ``paired`` (DPO/IPO; + TRL's ``ld_alpha``, which changes the reference sums) or
  ``unpaired`` (KTO; + whether the KL term is on). KTO's mismatched-pair KL log-probs are cached with
  ``ref_logps`` because prefopt pairs row *i* with a fixed row (:func:`prefopt.training.trainers.add_kl_completions`),
  so they are per-row and reference-only; their pairing is part of the data hash (``KL_completion_ids``).
  DPO and IPO runs on the same model and data share one entry.

**Storage.** ``<dir>/<key>/logps.arrow`` (an Arrow IPC file: ``ref_chosen_logps``/``ref_rejected_logps``
or ``ref_logps``/``ref_KL_logps``, float32, in row order) and ``<dir>/<key>/key.json``. No pickle
anywhere. An entry is written to a temporary directory beside it and renamed into place, so a reader
never sees half an entry. ``<dir>/<key>.lock`` (``fcntl.flock``) serialises processes: the first one
computes, the others wait and then read. Within one distributed job the main process takes the lock and
looks up; on a miss every rank computes its shard (TRL's own data-parallel precompute loop) and the main
process writes; on a hit the main process reads and broadcasts the (small) arrays, so other nodes need
not see the cache directory. ``key.json`` holds the sha256 of ``logps.arrow``: a read whose bytes do
not match it (edited or damaged values, an entry from before the hash) is a miss, logged and recomputed,
never a hit. A cache directory that cannot be written (read-only ``reference_cache.dir`` or
``$PREFOPT_CACHE``) stops ``prefopt train`` with exit 2 before any work (:func:`check_cache_dir`); a
full disk while storing an entry only costs the reuse (a warning; the run goes on).

**Wiring.** :class:`ReferenceCacheMixin` goes in front of ``trl.DPOTrainer``/``trl.KTOTrainer`` in the
prefopt trainer classes; with ``reference_cache={...}`` it replaces TRL's ``_precompute_ref_logps``.
(TRL 1.16 reuses its own precomputed log-probs only for a dataset loaded from files and an identical
config: its key is the tokenised dataset's fingerprint, which hashes the whole config — β included —
through a closure, so no two points of a sweep share them, and in-memory datasets never do.) The TRL
config must have ``precompute_ref_log_probs=True``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefopt.config.algorithms import get_spec
from prefopt.core.cache import cache_root
from prefopt.core.errors import PrefoptError
from prefopt.model.loading import builtin_config, registered_checkpoint

log = logging.getLogger("prefopt")

FORMAT_VERSION = 1
PAIRED_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
UNPAIRED_COLUMNS = ("ref_logps", "ref_KL_logps")
_HEX = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


# ------------------------------------------------------------------------------------------ locations
def default_cache_dir(configured: str | os.PathLike | None = None) -> Path:
    """``reference_cache.dir``, else ``$PREFOPT_CACHE/ref``, else ``~/.cache/prefopt/ref``."""
    if configured:
        return Path(configured).expanduser()
    return cache_root() / "ref"


def check_cache_dir(recipe) -> None:
    """With ``reference_cache.enabled``, the cache directory must be writable (its lock file and new
    entries live there): else exit 2 naming the directory and the setting it came from, before any
    data or model work."""
    if not recipe.reference_cache.enabled or not get_spec(recipe.algorithm).uses_reference:
        return
    root = default_cache_dir(recipe.reference_cache.dir)
    if recipe.reference_cache.dir:
        where = "reference_cache.dir"
    elif os.environ.get("PREFOPT_CACHE"):
        where = f"$PREFOPT_CACHE ({os.environ['PREFOPT_CACHE']})"
    else:
        where = "reference_cache (default ~/.cache/prefopt/ref)"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PrefoptError(
            f"the reference log-prob cache directory {root} is not writable ({exc.strerror or exc}).",
            where=where,
            fix="point reference_cache.dir (or $PREFOPT_CACHE) at a writable directory, or set "
            "reference_cache.enabled: false.",
        ) from None


# ------------------------------------------------------------------------------------------ hashing
def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the key parts."""
    return _sha(canonical_json({"format": FORMAT_VERSION, **parts}))


def file_sha256(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """sha256 of a file. A Hugging Face cache blob is named by its content hash (sha256 for LFS files,
    the git blob sha1 otherwise), so it is read from the name; other files are hashed once and memoised
    in ``memo_dir`` by (real path, size, mtime)."""
    real = os.path.realpath(path)
    name = os.path.basename(real)
    if _HEX.match(name) and os.path.basename(os.path.dirname(real)) == "blobs":
        return name
    st = os.stat(real)
    memo = None
    if memo_dir is not None:
        memo = Path(memo_dir) / "filehash" / f"{_sha(real)[:32]}.json"
        try:
            m = json.loads(memo.read_text())
            if m["path"] == real and m["size"] == st.st_size and m["mtime_ns"] == st.st_mtime_ns:
                return m["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo is not None:
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f"{memo.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}")
            tmp.write_text(
                json.dumps({"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest})
            )
            os.replace(tmp, memo)
    return digest


def weights_files_identity(
    directory: str | os.PathLike, memo_dir: str | os.PathLike | None = None
) -> dict[str, str]:
    """``{file name: sha256}`` of a checkpoint's weight files (safetensors, else .bin/.pt) and config.json."""
    d = Path(directory)
    files = sorted(d.glob("*.safetensors")) or sorted(d.glob("*.bin")) or sorted(d.glob("*.pt"))
    out = {f.name: file_sha256(f, memo_dir) for f in files}
    for extra in ("config.json", "adapter_config.json"):
        if (d / extra).exists():
            out[extra] = file_sha256(d / extra, memo_dir)
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin, *.pt) in {d}")
    return out


def _library_versions() -> dict[str, str]:
    import torch
    import transformers

    def mm(v: str) -> str:
        return ".".join(v.split("+")[0].split(".")[:2])

    return {"torch": mm(torch.__version__), "transformers": mm(transformers.__version__)}


def model_identity(model_cfg, seed: int, memo_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The model part of the key, from a recipe's ``model:`` section (no weights are read for builtin
    models; weight files are hashed, or read from the HF cache's blob names, for the others).

    The reference is the base model whatever ``lora:`` says (adapter disabled), so LoRA settings are
    not part of it; 4-bit quantization is."""
    name = model_cfg.name
    ident: dict[str, Any] = {
        "source": name,
        "dtype": model_cfg.dtype,
        "attn_implementation": model_cfg.attn_implementation,
        "quantization": model_cfg.quantization.model_dump() if model_cfg.quantization else None,
    }
    if name.startswith("builtin:"):
        cfg = builtin_config(name.split(":", 1)[1]).to_dict()
        cfg.pop("transformers_version", None)
        ident.update(seed=seed, config_sha256=_sha(canonical_json(cfg)), versions=_library_versions())
    elif registered_checkpoint(name) is not None:  # a plugin's name, e.g. world:<task>
        ident["weights"] = weights_files_identity(registered_checkpoint(name), memo_dir)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            from huggingface_hub import try_to_load_from_cache

            cfg_file = try_to_load_from_cache(name, "config.json", revision=model_cfg.revision)
            if not isinstance(cfg_file, str):
                raise FileNotFoundError(f"{name} is neither a local path nor in the local Hugging Face cache")
            path = Path(cfg_file).parent
            ident["snapshot"] = path.name  # the resolved commit
        ident.update(revision=model_cfg.revision, weights=weights_files_identity(path, memo_dir))
    return ident


def reference_tensors(model) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` of the reference weights, names sorted and normalised: for a PEFT model the
    base weights without the adapters (the reference is the adapter-disabled base), named as in the
    plain model, so LoRA and full fine-tuning on one base share cache entries."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        items = []
        for n, p in model.get_base_model().named_parameters():
            # adapters are not the reference — except TRL's "ref" adapter (re-training an existing adapter)
            if ("lora_" in n and ".ref." not in n) or ".modules_to_save." in n:
                continue
            items.append((n.replace(".base_layer.", ".").replace(".original_module.", "."), p))
    else:
        items = list(model.named_parameters())
    yield from sorted(items, key=lambda kv: kv[0])


def weights_sha256(model) -> str:
    """Full sha256 of the reference weights (name, dtype, shape, bytes): the key's model part when no
    identity is given."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in reference_tensors(model):
            t = t.detach().cpu()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.dtype == torch.bfloat16 or "float8" in str(t.dtype):
                t = t.float()  # no numpy dtype; exact in float32
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_sample_fingerprint(model, sample: int = 256) -> str:
    """Cheap guard over the weights as held in memory: per tensor a strided sample of ``sample`` values
    and the float64 sum and absolute sum (10 significant digits, so thread counts don't matter).
    Reads every weight once (no sha256 over gigabytes) and catches any training step or edit."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in reference_tensors(model):
            flat = t.detach().reshape(-1)
            n = flat.numel()
            if n == 0:
                h.update(f"{name}|empty".encode())
                continue
            step = max(1, n // sample)
            vals = flat[::step][:sample].double().cpu().numpy()
            if flat.is_floating_point():
                s, a = flat.double().sum().item(), flat.double().abs().sum().item()
            else:
                s, a = float(flat.sum().item()), float(flat.numel())
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{s:.10g}|{a:.10g}|".encode())
            h.update(np.round(vals, 6).tobytes())
    return h.hexdigest()


def tokenizer_identity(tokenizer) -> dict[str, Any]:
    """Vocabulary/merges/normaliser hash, special tokens and ids, and the chat template's hash."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # runtime state, not the vocabulary
        spec.pop("padding", None)
        vocab = _sha(canonical_json(spec))
    else:
        vocab = _sha(canonical_json(sorted(tokenizer.get_vocab().items())))
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    for k in ("bos", "eos", "pad", "unk"):
        special[f"{k}_token_id"] = getattr(tokenizer, f"{k}_token_id", None)
    template = getattr(tokenizer, "chat_template", None)
    return {
        "class": type(tokenizer).__name__,
        "vocab_sha256": vocab,
        "special_tokens": special,
        "chat_template_sha256": None if template is None else _sha(canonical_json(template)),
    }


def id_columns(dataset, family: str) -> list[str]:
    """The token-id columns the reference forward reads."""
    want = (
        ["prompt_ids", "chosen_ids", "rejected_ids"]
        if family == "paired"
        else ["prompt_ids", "completion_ids", "KL_completion_ids"]
    )
    return [c for c in want if c in dataset.column_names]


def data_fingerprint(dataset, columns: list[str], batch_size: int = 8192) -> dict[str, Any]:
    """sha256 of the id columns in row order (lengths and values streamed separately per column, as
    int64, so storage width and chunking don't matter). Reads the data once, in batches."""
    hashers = {c: (hashlib.sha256(), hashlib.sha256()) for c in columns}
    rows = 0
    for batch in dataset.select_columns(columns).with_format("arrow").iter(batch_size=batch_size):
        rows += batch.num_rows
        for c in columns:
            col = batch.column(c)
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
            values = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64)
            hashers[c][0].update(lengths.tobytes())
            hashers[c][1].update(values.tobytes())
    digest = _sha(canonical_json({c: [a.hexdigest(), b.hexdigest()] for c, (a, b) in hashers.items()}))
    return {"sha256": digest, "rows": rows, "columns": list(columns)}


def build_key_parts(
    *,
    model: dict[str, Any],
    tokenizer: dict[str, Any],
    data: dict[str, Any],
    family: str,
    max_length: int | None,
    max_prompt_length: int | None,
    truncation_mode: str | None,
    dtype: dict[str, Any],
    kl: bool | None = None,
    ld_alpha: float | None = None,
) -> dict[str, Any]:
    """Everything the reference log-probs depend on, as a JSON-able dict (see the module docstring)."""
    if family not in ("paired", "unpaired"):
        raise ValueError(f"family must be 'paired' or 'unpaired', not {family!r}")
    algo: dict[str, Any] = {"family": family}
    if family == "paired":
        algo["ld_alpha"] = ld_alpha
    else:
        algo["kl"] = bool(kl)
    return {
        "model": model,
        "tokenizer": {k: v for k, v in tokenizer.items() if k != "chat_template_sha256"},
        "chat_template_sha256": tokenizer.get("chat_template_sha256"),
        "data": data,
        "lengths": {
            "max_length": max_length,
            "max_prompt_length": max_prompt_length,
            "truncation_mode": truncation_mode,
        },
        "dtype": dtype,
        "algorithm": algo,
    }


# ------------------------------------------------------------------------------------------ storage
class ReferenceCache:
    """One directory per key: ``logps.arrow`` + ``key.json``; ``<key>.lock`` serialises writers."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = default_cache_dir(root)

    def path(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def lock(self, key: str, *, poll_s: float = 0.5) -> Iterator[None]:
        """Exclusive ``fcntl.flock`` on ``<key>.lock`` (released by the OS if the holder dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / f"{key}.lock", "a+")  # noqa: SIM115 - closed below
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("reference cache: another process is computing %s…; waiting for it", key[:12])
                fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def lookup(
        self, key: str, n_rows: int | None = None, columns: tuple[str, ...] | None = None
    ) -> dict[str, np.ndarray] | None:
        """The stored columns, or None (absent, unreadable or not matching → recomputed and replaced)."""
        d = self.path(key)
        if not (d / "key.json").exists():
            return None
        try:
            meta = json.loads((d / "key.json").read_text())
            if meta.get("key") != key or meta.get("format") != FORMAT_VERSION:
                raise ValueError("key.json does not match")
            stored = meta.get("values_sha256")
            if not stored:
                raise ValueError("no content hash (written by an older prefopt)")
            data = (d / "logps.arrow").read_bytes()
            if _sha(data) != stored:
                raise ValueError("the stored values do not match their content hash (modified or damaged)")
            table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
            if n_rows is not None and table.num_rows != n_rows:
                raise ValueError(f"{table.num_rows} rows stored, {n_rows} expected")
            cols = columns or tuple(table.column_names)
            return {c: table.column(c).to_numpy().astype(np.float32, copy=True) for c in cols}
        except Exception as e:  # noqa: BLE001 - a damaged entry is a miss, never an error
            log.warning("reference cache: ignoring unreadable entry %s (%s); recomputing", d, e)
            return None

    def store(
        self,
        key: str,
        parts: dict[str, Any],
        columns: dict[str, np.ndarray],
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write atomically: a temporary directory beside the entry, renamed into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        for stale in self.root.glob(f".{key}.tmp-*"):  # left by a killed writer (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            table = pa.table({c: pa.array(np.asarray(v, dtype=np.float32)) for c, v in columns.items()})
            with (
                pa.OSFile(str(tmp / "logps.arrow"), "wb") as sink,
                pa.ipc.new_file(sink, table.schema) as writer,
            ):
                writer.write_table(table)
            meta = {
                "key": key,
                "format": FORMAT_VERSION,
                "rows": table.num_rows,
                "columns": list(columns),
                "parts": parts,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "host": socket.gethostname(),
                # a read whose bytes do not hash to this is a miss (recomputed), never a hit
                "values_sha256": _sha((tmp / "logps.arrow").read_bytes()),
                **(extra or {}),
            }
            (tmp / "key.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


# ------------------------------------------------------------------------------------------ trainer side
def _family(trainer) -> str:
    from trl import KTOTrainer

    return "unpaired" if isinstance(trainer, KTOTrainer) else "paired"


def _reference_model(trainer):
    return trainer.ref_model if trainer.ref_model is not None else trainer.model


def trainer_key_parts(
    trainer, dataset, identity: dict[str, Any] | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The key parts for ``dataset`` under ``trainer``'s reference, collator and precision."""
    family = _family(trainer)
    model = _reference_model(trainer)
    args = trainer.args
    model_part = getattr(trainer, "_refcache_model_part", None)
    if model_part is None:  # once per trainer: the reference weights as they are before training
        if identity is None:
            model_part = {"weights_sha256": weights_sha256(model)}
        else:
            model_part = {**identity, "in_memory": weights_sample_fingerprint(model)}
        trainer._refcache_model_part = model_part
    first = next(iter(model.parameters()), None)
    dtype = {
        "weights": str(first.dtype) if first is not None else None,
        "autocast": str(trainer.accelerator.mixed_precision),
    }
    extra = dict(extra or {})
    return build_key_parts(
        model=model_part,
        tokenizer=tokenizer_identity(trainer.processing_class),
        data=data_fingerprint(dataset, id_columns(dataset, family)),
        family=family,
        max_length=args.max_length,
        max_prompt_length=extra.pop("max_prompt_length", None),
        truncation_mode=getattr(args, "truncation_mode", None),
        dtype=dtype,
        kl=getattr(trainer, "calculate_KL", None),
        ld_alpha=getattr(trainer, "ld_alpha", None),
    ) | ({"extra": extra} if extra else {})


def compute_reference_logps(trainer, dataset, name: str, batch_size: int) -> dict[str, np.ndarray]:
    """TRL's precompute loop (``_precompute_ref_logps`` in DPO/KTO): the trainer's collator, its
    ``compute_ref_log_probs`` (adapter disabled under PEFT), data-parallel over ranks and gathered."""
    import torch
    from accelerate.utils import tqdm
    from torch.utils.data import DataLoader
    from trl.models import prepare_deepspeed

    family = _family(trainer)
    columns = PAIRED_COLUMNS if family == "paired" else UNPAIRED_COLUMNS
    two = family == "paired" or bool(getattr(trainer, "calculate_KL", False))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=trainer.data_collator,
        num_workers=trainer.args.dataloader_num_workers,
        pin_memory=trainer.args.dataloader_pin_memory and torch.cuda.is_available(),
        shuffle=False,
    )
    loader = trainer.accelerator.prepare(loader)
    if trainer.ref_model is None and trainer.is_deepspeed_enabled:
        if getattr(trainer, "_precompute_engine", None) is None:
            trainer._precompute_engine = prepare_deepspeed(trainer.model, trainer.accelerator)
        model = trainer._precompute_engine
    else:
        model = _reference_model(trainer)
    out: dict[str, list] = {c: [] for c in columns}
    for batch in tqdm(
        loader,
        desc=f"Computing reference log probs for {name} dataset (cache miss)",
        disable=bool(os.environ.get("TQDM_DISABLE", "")),
    ):
        first, second = trainer.compute_ref_log_probs(model, batch)
        if two:
            first, second = trainer.accelerator.gather_for_metrics((first, second))
            out[columns[1]].append(second.float().cpu())
        else:
            first = trainer.accelerator.gather_for_metrics(first)
        out[columns[0]].append(first.float().cpu())
    return {c: torch.cat(v).numpy() for c, v in out.items() if v}


def attach_reference_logps(
    trainer,
    dataset,
    *,
    name: str = "train",
    batch_size: int | None = None,
    cache: ReferenceCache | None = None,
    identity: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
):
    """``dataset`` with the reference columns added — read from the cache, or computed (with TRL's
    forward, see :func:`compute_reference_logps`) and stored. Safe with several processes and ranks."""
    from accelerate.utils import broadcast_object_list

    cache = cache or ReferenceCache()
    acc = trainer.accelerator
    family = _family(trainer)
    wanted = PAIRED_COLUMNS if family == "paired" else UNPAIRED_COLUMNS
    if family == "unpaired" and not getattr(trainer, "calculate_KL", False):
        wanted = wanted[:1]
    if all(c in dataset.column_names for c in wanted):
        return dataset
    batch_size = (
        batch_size or trainer.args.precompute_ref_batch_size or trainer.args.per_device_train_batch_size
    )
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        payload: list[Any] = [None]
        key = parts = None
        if acc.is_main_process:
            parts = trainer_key_parts(trainer, dataset, identity, extra)
            key = cache_key(parts)
            stack.enter_context(cache.lock(key))
            payload = [{"key": key, "values": cache.lookup(key, len(dataset), wanted)}]
        if acc.num_processes > 1:
            broadcast_object_list(payload, from_process=0)
        key, values = payload[0]["key"], payload[0]["values"]
        hit = values is not None
        if not hit:
            values = compute_reference_logps(trainer, dataset, name, batch_size)
            values = {c: values[c] for c in wanted}
            if acc.is_main_process:
                try:
                    cache.store(
                        key, parts, values, extra={"computed_in_s": round(time.perf_counter() - t0, 3)}
                    )
                except OSError as exc:  # a full disk: the values are computed, only their reuse is lost
                    log.warning(
                        "reference cache: could not store %s (%s); continuing without it", key[:12], exc
                    )
    acc.wait_for_everyone()
    seconds = time.perf_counter() - t0
    event = {
        "dataset": name,
        "key": key,
        "hit": hit,
        "rows": len(dataset),
        "seconds": round(seconds, 3),
        "path": str(cache.path(key)),
    }
    getattr(trainer, "reference_cache_events", []).append(event)
    log.info(
        "reference log-probs for %s: cache %s (%s…, %d rows, %.1fs) %s",
        name,
        "hit" if hit else "miss → computed",
        key[:12],
        len(dataset),
        seconds,
        cache.path(key),
    )
    for c in wanted:
        dataset = dataset.add_column(c, np.asarray(values[c], dtype=np.float32))
    return dataset


class ReferenceCacheMixin:
    """Mix in front of ``trl.DPOTrainer`` / ``trl.KTOTrainer``::

        class PrefoptDPOTrainer(ReferenceCacheMixin, ..., DPOTrainer)

    ``reference_cache={"dir": ..., "identity": model_identity(...), "extra": {"max_prompt_length": ...}}``
    (``None`` → TRL's behaviour). Needs ``precompute_ref_log_probs=True`` in the TRL config; then TRL
    keeps no reference copy and reads the columns this adds. Datasets that already hold the reference
    columns are used as they are (TRL would recompute them and fail on the duplicate columns).
    ``trainer.reference_cache_events`` lists what each dataset got (hit/miss, key, seconds)."""

    def __init__(
        self, *args, reference_cache: dict[str, Any] | None = None, reference_first: bool = True, **kwargs
    ):
        self.reference_cache_config = reference_cache
        self.reference_cache_events: list[dict[str, Any]] = []
        self.reference_first = reference_first
        if reference_cache is not None and not getattr(kwargs.get("args"), "precompute_ref_log_probs", True):
            raise ValueError("reference_cache needs precompute_ref_log_probs=True in the TRL config")
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        cfg = self.reference_cache_config
        wanted = PAIRED_COLUMNS if _family(self) == "paired" else UNPAIRED_COLUMNS
        if _family(self) == "unpaired" and not getattr(self, "calculate_KL", False):
            wanted = wanted[:1]
        if all(c in dataset.column_names for c in wanted):
            return dataset
        if cfg is None:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        return attach_reference_logps(
            self,
            dataset,
            name=name,
            batch_size=batch_size,
            cache=ReferenceCache(cfg.get("dir")),
            identity=cfg.get("identity"),
            extra=cfg.get("extra"),
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """On-the-fly reference (no precompute): run the reference forward *before* the policy forward.
        TRL runs it after, while the policy's activations are held for backward, so the reference's
        transient activations stack on top of them (about one layer's worth of extra peak memory).
        Same forward, same numbers: the batch just carries the reference columns, as with precompute."""
        if self.precompute_ref_logps or not self.reference_first or not isinstance(inputs, dict):
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        cols = PAIRED_COLUMNS if _family(self) == "paired" else UNPAIRED_COLUMNS
        first, second = self.compute_ref_log_probs(_reference_model(self), inputs)
        inputs = {**inputs, cols[0]: first}
        if second is not None:
            inputs[cols[1]] = second
        self.precompute_ref_logps = True  # TRL (and prefopt's losses) read the columns from the batch
        try:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        finally:
            self.precompute_ref_logps = False


def trainer_kwargs(recipe) -> dict[str, Any]:
    """``{"reference_cache": {...}}`` for the trainer when ``recipe.reference_cache.enabled`` is set (as
    ``prefopt compare`` does by default) and the algorithm has a reference, else ``{}``."""
    if not recipe.reference_cache.enabled or not get_spec(recipe.algorithm).uses_reference:
        return {}
    root = default_cache_dir(recipe.reference_cache.dir)
    return {
        "reference_cache": {
            "dir": str(root),
            "identity": model_identity(recipe.model, recipe.seed, memo_dir=root),
            "extra": {"max_prompt_length": recipe.training.get("max_prompt_length")},
        }
    }
