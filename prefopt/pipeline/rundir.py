"""The run directory's guards: where a run may write, who owns it, and whose checkpoints it holds.

One training run owns one directory. Before anything is written into it (``resolved.yaml``, the data
report, checkpoints) prefopt

* checks the path: ``output.dir`` must be a valid template (``{algorithm}``, ``{seed}``,
  ``{timestamp}``), must not be a file or lie under one, and must be writable;
* takes a lock: ``fcntl.flock`` on ``<run dir>/.prefopt.lock``, held by the main process for the
  whole run. A second run into a busy directory is refused, naming the directory and the owner's PID.
  The kernel drops the lock when its holder dies, so a lock file left by a killed run is harmless;
* with ``--overwrite`` (``output.overwrite: true``) empties the directory, so the run is the same as a
  run into a new directory — nothing of the old run is resumed;
* compares the recipe with the one whose checkpoints the directory holds: the run identity (a sha256
  over the training-relevant parts of the resolved recipe, plus the training data's fingerprint) is
  kept in ``run_identity.json`` and in every checkpoint's completion marker. Another recipe's
  checkpoints are never resumed: the run stops with exit 2, naming the keys that differ.

:func:`session` wraps a whole run: the lock, SIGINT/SIGTERM outside the training loop (data work,
evaluation) turned into a clean stop with an "interrupted" manifest and exit 130/143, and a full or
read-only disk turned into exit 2 naming the path (the last complete checkpoint stays whole).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefopt.core.errors import Interrupted, PrefoptError, TrainingInterrupted
from prefopt.pipeline.manifest import prepare_run_dir, write_json
from prefopt.training.resilience import MARKER, complete_checkpoints, last_complete_checkpoint

log = logging.getLogger("prefopt")

LOCK_NAME = ".prefopt.lock"
IDENTITY_NAME = "run_identity.json"
TEMPLATE_FIELDS = ("algorithm", "seed", "timestamp")
# what a prefopt run writes at the top of its directory (a directory holding none of these is not a run)
RUN_FILES = ("resolved.yaml", "manifest.json", IDENTITY_NAME, "metrics.jsonl", "checkpoints", "model")
# training: keys that change what is logged or kept, not the numbers a step computes
BOOKKEEPING_KEYS = frozenset(
    {
        "logging_steps",
        "logging_strategy",
        "logging_first_step",
        "logging_dir",
        "logging_nan_inf_filter",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "save_only_model",
        "report_to",
        "run_name",
        "disable_tqdm",
        "log_level",
        "eval_steps",
        "eval_strategy",
        "per_device_eval_batch_size",
        "eval_accumulation_steps",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "push_to_hub",
        "hub_model_id",
        "hub_strategy",
    }
)
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
DISK_MESSAGES = (  # safetensors and the OS name a full or read-only disk in their own words
    "no space left on device",
    "storagefull",
    "disk quota",
    "read-only file system",
    "readonlyfilesystem",
)
# torch.save's writer does not: "file write failed", "unexpected pos N vs M", "iostream error" — taken
# as a disk fault when the run dir's disk is (nearly) full
WRITE_FAILURES = ("file write failed", "unexpected pos", "iostream error", "pytorchstreamwriter")
NEARLY_FULL_BYTES = 64 << 20


# ------------------------------------------------------------------------------------------ the path
def run_dir_for(recipe, output_dir: str | os.PathLike | None, base: Path | None = None) -> Path:
    """``--output-dir`` as given, else ``output.dir`` with its placeholders filled in. An unknown or
    malformed placeholder is refused (exit 2) before anything else happens."""
    import datetime as _dt

    if output_dir:
        path = Path(output_dir).expanduser()
    else:
        template = recipe.output.dir
        check_template(template)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(template.format(algorithm=recipe.algorithm, seed=recipe.seed, timestamp=stamp))
        path = path.expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def check_template(template: str) -> None:
    known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise PrefoptError(
            f"{template!r} is not a valid directory template ({exc}).",
            where="output.dir",
            fix=f"use only the placeholders {known}; write a literal brace as {{{{ or }}}}.",
        ) from None
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise PrefoptError(
            f"{template!r} holds the unknown placeholder {{{unknown[0]}}}.",
            where="output.dir",
            fix=f"use only {known} (or a literal path).",
        )


def check_output_path(path: Path, where: str) -> None:
    """``path`` is a directory or can become one (not a file, not under a file); else exit 2."""
    if path.exists() and not path.is_dir():
        raise PrefoptError(
            f"{path} is a file, not a directory.", where=where, fix="choose another output directory."
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise PrefoptError(
                    f"{path} lies under {parent}, which is a file.",
                    where=where,
                    fix="choose an output directory whose parents are directories.",
                )
            break


def _not_writable(path: Path, exc: OSError, where: str) -> PrefoptError:
    return PrefoptError(
        f"cannot write into {path} ({exc.strerror or exc}).",
        where=where,
        fix="choose a writable output directory (or fix its permissions / mount).",
    )


def check_writable(path: Path, where: str) -> None:
    try:
        probe = path / f".prefopt-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise _not_writable(path, exc, where) from None


# ------------------------------------------------------------------------------------------ the lock
def lock_owner(run_dir: Path) -> str:
    try:
        return (Path(run_dir) / LOCK_NAME).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def locked(run_dir: Path, where: str = "output.dir") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<run_dir>/.prefopt.lock`` for the block. A busy directory
    → exit 2 naming it and the holder's PID, before anything in it is touched."""
    run_dir = Path(run_dir)
    check_output_path(run_dir, where)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(run_dir / LOCK_NAME, "a+")  # noqa: SIM115 - closed in finally; "a+" keeps the PID
    except OSError as exc:
        raise _not_writable(run_dir, exc, where) from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrefoptError(
                f"the run directory {run_dir} is in use by another prefopt run (PID {lock_owner(run_dir)}).",
                where=where,
                fix="wait for that run to finish (or stop it), or choose another output.dir / --output-dir.",
            ) from None
        check_writable(run_dir, where)  # the lock file may exist in a directory that is read-only now
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


# ------------------------------------------------------------------------------------------ overwrite
def looks_like_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def clear_for_overwrite(run_dir: Path) -> list[str]:
    """Empty a run directory for ``--overwrite`` (everything but the lock we hold); returns what was
    removed. A non-empty directory that does not hold a prefopt run is refused rather than emptied."""
    run_dir = Path(run_dir)
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_NAME] if run_dir.is_dir() else []
    if not entries:
        return []
    if not looks_like_run(run_dir):
        names = ", ".join(sorted(p.name for p in entries)[:5])
        raise PrefoptError(
            f"--overwrite would delete {run_dir}, but it does not hold a prefopt run ({names}).",
            where="output.dir",
            fix="choose an empty or new output directory.",
        )
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return sorted(p.name for p in entries)


# ------------------------------------------------------------------------------------------ identity
def identity_parts(resolved: dict[str, Any], loss_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training-relevant parts of a resolved recipe (``Recipe.to_dict()``): algorithm, seed, model,
    data, the loss parameters (defaults filled in) and ``training:`` without bookkeeping keys (logging,
    saving, reporting). Output, evaluation, health and cache settings do not change the weights.

    Where a data file lives (``path``) is not part of it: the same recipe in a moved or copied project
    folder is the same run, and what the rows hold is the data fingerprint's job (:func:`check_data`
    names a change of content as such)."""
    training = {k: v for k, v in (resolved.get("training") or {}).items() if k not in BOOKKEEPING_KEYS}
    return {
        "algorithm": resolved.get("algorithm"),
        "seed": resolved.get("seed"),
        "model": resolved.get("model"),
        "data": _without_paths(resolved.get("data")),
        "loss": loss_params if loss_params is not None else resolved.get("loss"),
        "training": training,
    }


def _without_paths(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for split in ("train", "eval"):
        if isinstance(out.get(split), list):
            out[split] = [
                {k: v for k, v in s.items() if k != "path"} if isinstance(s, dict) else s for s in out[split]
            ]
    return out


def digest(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def recipe_identity(recipe) -> dict[str, Any]:
    loss = recipe.loss_params
    loss_params = loss.model_dump(mode="json") if hasattr(loss, "model_dump") else dict(loss or {})
    parts = identity_parts(recipe.to_dict(), loss_params)
    return {"sha256": digest(parts), "parts": parts}


def recorded_identity(run_dir: Path) -> dict[str, Any] | None:
    """The identity of the run whose files the directory holds: ``run_identity.json``, or for a run
    written before identities were recorded, the parts of its ``resolved.yaml``."""
    run_dir = Path(run_dir)
    try:
        return json.loads((run_dir / IDENTITY_NAME).read_text())
    except (OSError, ValueError):
        pass
    try:
        import yaml

        resolved = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    except (OSError, ValueError, ImportError):
        return None
    if not isinstance(resolved, dict):
        return None
    parts = identity_parts(resolved)
    return {"sha256": None, "parts": parts, "legacy": True}


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key: old → new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += differing_keys(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += differing_keys(a, b, f"{prefix}.{i}")
        return out
    if old == new:
        return []
    return [f"{prefix or '(recipe)'}: {_short(old)} → {_short(new)}"]


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


def has_resumable_state(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return bool(complete_checkpoints(run_dir / "checkpoints")) or (run_dir / "model").is_dir()


def _mismatch(run_dir: Path, what: str, keys: list[str]) -> PrefoptError:
    shown = "; ".join(keys[:6]) + (f"; and {len(keys) - 6} more" if len(keys) > 6 else "")
    return PrefoptError(
        f"{run_dir} holds the checkpoints of another recipe ({what}: {shown}); prefopt does not resume "
        "a different recipe's training.",
        where="output.dir",
        fix="pass --overwrite (or set output.overwrite: true) to start this recipe afresh there, or "
        "choose another output.dir / --output-dir.",
    )


def check_identity(run_dir: Path, identity: dict[str, Any], recipe=None) -> dict[str, Any] | None:
    """Refuse a run directory holding another recipe's checkpoints or model; returns what was recorded.
    A run from before identities were recorded is compared through its ``resolved.yaml``, section by
    section as written (``recipe``'s own ``to_dict()``)."""
    old = recorded_identity(run_dir)
    if old is None or not has_resumable_state(run_dir):
        return old
    if old.get("sha256") == identity["sha256"]:
        return old
    new_parts = identity["parts"]
    if old.get("legacy") and recipe is not None:
        new_parts = identity_parts(recipe.to_dict())
    keys = differing_keys(old.get("parts"), new_parts)
    if old.get("legacy") and not keys:
        return old  # an older run of the same recipe (its resolved.yaml matches)
    if not keys:
        keys = [f"identity {old.get('sha256')} → {identity['sha256']}"]
    raise _mismatch(run_dir, "differing keys", keys)


def check_data(run_dir: Path, fingerprint: str, recorded: dict[str, Any] | None) -> None:
    """Refuse resuming checkpoints that were trained on other data (the fingerprint of the canonical
    training rows changed: edited files, another sample)."""
    before = (recorded or {}).get("data_fingerprint")
    if before and before != fingerprint and has_resumable_state(run_dir):
        raise _mismatch(run_dir, "the training data changed", [f"data fingerprint: {before} → {fingerprint}"])


def record_identity(run_dir: Path, identity: dict[str, Any], data_fingerprint: str | None = None) -> None:
    write_json(Path(run_dir) / IDENTITY_NAME, {**identity, "data_fingerprint": data_fingerprint})


def prepare(run_dir: Path, recipe, *, overwrite: bool, resume: bool) -> dict[str, Any]:
    """Overwrite / finished-run / other-recipe checks for the locked run directory; returns the run's
    identity (with the data fingerprint recorded so far) and records it."""
    if overwrite and resume:
        raise PrefoptError(
            "--overwrite and --resume contradict each other: --overwrite starts afresh, --resume continues.",
            where="command line",
            fix="pass one of them.",
        )
    if overwrite:
        removed = clear_for_overwrite(run_dir)
        if removed:
            log.warning("--overwrite: removed the previous run in %s (%s)", run_dir, ", ".join(removed))
    prepare_run_dir(run_dir, overwrite=overwrite, resume=resume)
    identity = recipe_identity(recipe)
    old = check_identity(run_dir, identity, recipe)
    same = old is not None and old.get("sha256") == identity["sha256"]
    identity["data_fingerprint"] = old.get("data_fingerprint") if same else None
    record_identity(
        run_dir, {k: v for k, v in identity.items() if k != "data_fingerprint"}, identity["data_fingerprint"]
    )
    return identity


# ------------------------------------------------------------------------------------------ disk faults
def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 8:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def free_bytes(path: Path) -> int | None:
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def is_disk_error(exc: BaseException, run_dir: Path | None = None) -> bool:
    """A full disk or a read-only file system (anywhere), no permission to write in the run dir, or
    torch's writer failing while the run dir's disk is (nearly) full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            return True
        if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM) and run_dir is not None:
            if str(e.filename or "").startswith(str(run_dir)):
                return True
        text = str(e).lower().replace(" ", "")
        if any(m.replace(" ", "") in text for m in DISK_MESSAGES):
            return True
        if run_dir is not None and any(m.replace(" ", "") in text for m in WRITE_FAILURES):
            free = free_bytes(run_dir)
            if free is not None and free < NEARLY_FULL_BYTES:
                return True
    return False


def _unfinished_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and not (p / MARKER).exists())


def disk_error(exc: BaseException, run_dir: Path) -> PrefoptError:
    """A full or read-only disk as exit 2 naming the path; a checkpoint it cut short is removed (it
    never counted: it has no completion marker), so the last complete checkpoint stays the latest."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    partial = _unfinished_checkpoints(ckpt_dir)
    path = getattr(exc, "filename", None) or (partial[-1] if partial else run_dir)
    reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[-1][:200]
    free = free_bytes(Path(run_dir))
    if free is not None and free < NEARLY_FULL_BYTES and "space" not in reason.lower():
        reason = f"no space left on device ({free} bytes free; {reason})"
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    last = last_complete_checkpoint(ckpt_dir)
    kept = f"the last complete checkpoint ({last}) is intact" if last else "no checkpoint had been saved yet"
    return PrefoptError(
        f"writing {path} failed: {reason}; {kept}.",
        where=str(run_dir),
        fix="free space on that disk (or make it writable), or choose another output.dir; then re-run "
        "the same command to continue from the last complete checkpoint.",
    )


# ------------------------------------------------------------------------------------------ signals
@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`prefopt.core.errors.Interrupted` in this process (the training loop's
    own handler takes over while it runs). A worker forked meanwhile (the tokeniser pool) inherits the
    handler and dies of the signal quietly instead, so that ``Pool.terminate`` ends it at once."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Interrupted(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def session(run_dir: Path, *, main: bool, where: str = "output.dir") -> Iterator[None]:
    """A run's outer frame: the lock (main process), clean interrupts, disk faults as exit 2."""
    run_dir = Path(run_dir)
    with contextlib.ExitStack() as stack:
        if main:
            stack.enter_context(locked(run_dir, where))
        stack.enter_context(interrupts_raise())
        try:
            yield
        except KeyboardInterrupt as exc:  # a signal outside the training loop, or a second one in it
            signum = getattr(exc, "signum", signal.SIGINT)
            last = last_complete_checkpoint(run_dir / "checkpoints")
            if main:
                with contextlib.suppress(OSError):
                    write_json(
                        run_dir / "manifest.json",
                        {
                            "status": "interrupted",
                            "signal": signum,
                            "checkpoint": str(last) if last else None,
                        },
                    )
            raise TrainingInterrupted(signum, str(last) if last else None) from None
        except (PrefoptError, TrainingInterrupted):
            raise
        except Exception as exc:
            if not is_disk_error(exc, run_dir):
                raise
            raise disk_error(exc, run_dir) from exc
