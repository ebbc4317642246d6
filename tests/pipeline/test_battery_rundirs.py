"""The run-directory battery (issue 19): ``--overwrite`` starts afresh; another recipe's checkpoints
are never resumed; a re-run after a kill at any point equals the uninterrupted run, with no step
trained twice; a damaged checkpoint falls back to the previous one; a busy directory is refused;
interrupts end cleanly; the reference cache never serves altered values; full or read-only disks and
unusable output directories answer with exit 2 naming the path.

Every run is the tiny builtin model on 32 pairs, a few steps, in-process (``cli.main``) unless the
case needs real processes (tokeniser workers). Kills are reproduced by the state they leave on disk
(the checkpoints a kill keeps, a partial metrics line) or by real signals."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_input import _recipe
from test_resilience import _max_diff, _steps

from prefopt import cli
from prefopt.pipeline import rundir
from prefopt.training.resilience import MARKER, complete_checkpoints
from prefopt.training.resume import checkpoint_problems, choose_checkpoint, safetensors_problem

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = [
    {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)}
    for a in range(8)
    for b in range(4)
]
TRAINING = {
    "max_steps": 6,
    "per_device_train_batch_size": 4,  # 8 steps per epoch: max_steps ends inside an epoch
    "save_steps": 2,
    "save_total_limit": 10,
    "logging_steps": 1,
    "warmup_steps": 0,
    "learning_rate": 1e-3,
}


def _make(tmp: Path, rows=ROWS, **sections) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    training = {**TRAINING, **sections.pop("training", {})}
    return _recipe(tmp, rows, training=training, seed=1, **sections)


def _train(recipe: Path, out: Path | None, *extra: str) -> int:
    argv = ["train", "--config", str(recipe), *(["--output-dir", str(out)] if out else []), *extra]
    try:
        return cli.main(argv)
    except KeyboardInterrupt:  # must never escape: fail the test, not the session
        pytest.fail("KeyboardInterrupt escaped prefopt train")


def _one_paragraph(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("prefopt: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _copy_run(src: Path, dst: Path, drop=("model", "manifest.json")) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(rundir.LOCK_NAME))
    for name in drop:
        p = dst / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return dst


def _keep_checkpoints(out: Path, upto: int) -> None:
    for ck in (out / "checkpoints").glob("checkpoint-*"):
        if int(ck.name.split("-")[1]) > upto:
            shutil.rmtree(ck)


def _logged_losses(out: Path) -> list[float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The uninterrupted run every resumed run must equal."""
    tmp = tmp_path_factory.mktemp("base")
    recipe = _make(tmp)
    out = tmp / "run"
    assert _train(recipe, out) == 0
    return recipe, out


def _same_as_base(out: Path, base_out: Path) -> None:
    assert _max_diff(out, base_out) <= 1e-6
    assert _steps(out) == list(range(1, 7))  # every step once: no gap, none trained twice
    assert _manifest(out)["status"] == "finished"
    assert _manifest(out)["global_step"] == 6
    assert _manifest(out)["train_loss"] == pytest.approx(_manifest(base_out)["train_loss"], abs=1e-6)


# ------------------------------------------------------------------------------------------ mounts
def _sh(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` (a directory) read-only even for root: a read-only bind mount, else ``chattr +i``."""
    path.mkdir(parents=True, exist_ok=True)
    undo = None
    if _sh("mount", "--bind", str(path), str(path)):
        if _sh("mount", "-o", "remount,ro,bind", str(path)):
            undo = ("umount", str(path))
        else:
            _sh("umount", str(path))
    if undo is None and _sh("chattr", "+i", str(path)):
        undo = ("chattr", "-i", str(path))
    if undo is None:
        pytest.skip("cannot make a directory read-only here (no bind mount, no chattr +i)")
    try:
        try:
            (path / "probe").write_text("x")
            pytest.skip("the read-only mount still accepts writes")
        except OSError:
            pass
        yield path
    finally:
        _sh(*undo)


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int):
    path.mkdir(parents=True, exist_ok=True)
    if not _sh("mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)):
        pytest.skip("mount -t tmpfs is refused here (needs root / CAP_SYS_ADMIN)")
    try:
        yield path
    finally:
        _sh("umount", "-l", str(path))


# ================================================================================ overwrite
def test_base_run_reports_the_mean_of_its_step_losses(base):
    _, out = base
    losses = _logged_losses(out)  # logging_steps 1: one loss per step
    assert len(losses) == 6
    assert _manifest(out)["train_loss"] == pytest.approx(sum(losses) / 6, abs=1e-6)
    marker = json.loads((out / "checkpoints" / "checkpoint-6" / MARKER).read_text())
    assert marker["identity"] and marker["data_fingerprint"]
    assert marker["loss_sum"] == pytest.approx(sum(losses), abs=1e-5)


def test_overwrite_equals_a_fresh_directory(base, tmp_path, caplog):
    """A SimPO run, then the base DPO recipe with --overwrite into the same dir: nothing of SimPO's
    run is resumed; the weights equal those of the base run into a new dir."""
    _, base_out = base
    simpo = _make(tmp_path / "simpo", algorithm="simpo", training={"max_steps": 3, "save_steps": 1})
    out = tmp_path / "run"
    assert _train(simpo, out) == 0
    assert _train(base[0], out, "--overwrite") == 0
    assert "resuming from" not in caplog.text
    assert _manifest(out)["algorithm"] == "dpo"
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-6",
    ]  # SimPO's checkpoint-1 and -3 are gone
    _same_as_base(out, base_out)


def test_output_overwrite_key_on_an_interrupted_run_starts_afresh(base, tmp_path, caplog):
    _, base_out = base
    out = _copy_run(base_out, tmp_path / "run")
    _keep_checkpoints(out, 4)
    assert _train(base[0], out, "--set", "output.overwrite=true") == 0
    assert "resuming from" not in caplog.text
    _same_as_base(out, base_out)


def test_overwrite_refuses_a_directory_that_is_not_a_run(base, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert _train(base[0], out, "--overwrite") == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert str(out) in line and "does not hold a prefopt run" in line
    assert (out / "notes.txt").read_text() == "keep me"


def test_overwrite_with_resume_is_refused(base, tmp_path, capsys):
    assert _train(base[0], tmp_path / "run", "--overwrite", "--resume") == 2
    assert "--overwrite and --resume" in _one_paragraph(capsys.readouterr().err)


# ================================================================================ recipe identity
def test_another_recipe_is_not_resumed(base, tmp_path, capsys):
    """An unfinished DPO run's checkpoints, then a SimPO recipe into the dir: exit 2 naming the dir
    and the differing keys, with the fix — and nothing in the dir is touched."""
    _, base_out = base
    out = _copy_run(base_out, tmp_path / "run")
    resolved = (out / "resolved.yaml").read_text()
    simpo = _make(tmp_path / "simpo", algorithm="simpo")
    assert _train(simpo, out) == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert str(out) in line and "another recipe" in line
    assert "algorithm: dpo → simpo" in line
    assert "--overwrite" in line and "output.dir" in line
    assert (out / "resolved.yaml").read_text() == resolved
    assert not (out / "manifest.json").exists()


def test_a_changed_hyperparameter_is_named(base, tmp_path, capsys):
    _, base_out = base
    out = _copy_run(base_out, tmp_path / "run")
    assert _train(base[0], out, "--set", "loss.beta=0.5", "--set", "training.learning_rate=2e-3") == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert "loss.beta: 0.1 → 0.5" in line and "training.learning_rate: 0.001 → 0.002" in line


def test_changed_training_data_is_refused(base, tmp_path, capsys):
    """Same recipe, edited data file: the data fingerprint differs, the checkpoints are not resumed."""
    _, base_out = base
    recipe = tmp_path / "recipe" / "recipe.yaml"
    shutil.copytree(base[0].parent, recipe.parent, ignore=shutil.ignore_patterns("run"))
    rows = [dict(r, rejected=r["rejected"] + "0") for r in ROWS]
    (recipe.parent / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _copy_run(base_out, tmp_path / "run")
    assert _train(recipe, out) == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert "training data changed" in line and str(out) in line


def test_bookkeeping_keys_do_not_block_resuming(base, tmp_path):
    """Logging and saving cadence are not the recipe's identity: a re-run with other values resumes."""
    _, base_out = base
    out = _copy_run(base_out, tmp_path / "run")
    assert _train(base[0], out, "--set", "training.logging_steps=3", "--set", "training.save_steps=3") == 0
    _same_as_base(out, base_out)


def test_identity_parts_and_differing_keys():
    from prefopt.config.recipe import load_recipe

    a = rundir.recipe_identity(load_recipe(REPO / "configs/recipes/quickstart/dpo.yaml"))
    b = rundir.recipe_identity(
        load_recipe(
            REPO / "configs/recipes/quickstart/dpo.yaml", ["training.logging_steps=1", "output.dir=x"]
        )
    )
    c = rundir.recipe_identity(
        load_recipe(REPO / "configs/recipes/quickstart/dpo.yaml", ["training.max_steps=7"])
    )
    assert a["sha256"] == b["sha256"]  # bookkeeping and output keys are not part of it
    assert a["sha256"] != c["sha256"]
    assert rundir.differing_keys(a["parts"], c["parts"]) == ["training.max_steps: null → 7"]


def test_a_run_without_a_recorded_identity_is_compared_by_its_resolved_yaml(base, tmp_path):
    """Checkpoints written before identities were recorded: resolved.yaml decides."""
    from prefopt.config.recipe import load_recipe

    out = _copy_run(base[1], tmp_path / "run")
    (out / rundir.IDENTITY_NAME).unlink()
    same = load_recipe(base[0])
    identity = rundir.recipe_identity(same)
    assert rundir.check_identity(out, identity, same)["legacy"]
    other = load_recipe(base[0], ["algorithm=ipo"])
    with pytest.raises(Exception, match="algorithm: dpo → ipo"):
        rundir.check_identity(out, rundir.recipe_identity(other), other)


# ================================================================================ exact resume
def test_rerun_after_a_kill_past_the_last_checkpoint_trains_nothing(base, tmp_path, caplog):
    """Killed after checkpoint-6 (= max_steps) was saved, before the model: the re-run restores it and
    only saves, evaluates and reports — no step 7."""
    _, base_out = base
    out = _copy_run(base_out, tmp_path / "run", drop=("model", "manifest.json", "report.md"))
    assert _train(base[0], out) == 0
    assert "finishing the run without training" in caplog.text
    _same_as_base(out, base_out)
    assert (out / "model" / "model.safetensors").exists() and (out / "report.md").exists()


def test_rerun_after_a_kill_during_evaluation_finishes_the_run(base, tmp_path):
    _, base_out = base
    out = _copy_run(base_out, tmp_path / "run", drop=("manifest.json",))  # the model was saved
    assert _train(base[0], out) == 0
    _same_as_base(out, base_out)


def test_rerun_after_a_kill_mid_step_is_exact(base, tmp_path, caplog):
    """The state a SIGKILL in step 4 leaves: checkpoint-2 complete, checkpoint-4 half written (no
    marker), metrics up to step 3 plus a cut line. The re-run resumes from checkpoint-2, trains each
    step once and reports the loss of the whole run."""
    _, base_out = base
    out = _copy_run(base_out, tmp_path / "run")
    _keep_checkpoints(out, 4)
    (out / "checkpoints" / "checkpoint-4" / MARKER).unlink()
    (out / "checkpoints" / "checkpoint-4" / "optimizer.pt").write_bytes(b"PK\x03\x04 cut")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= 3]
    (out / "metrics.jsonl").write_text("\n".join(kept) + '\n{"step": 4, "lo')
    assert _train(base[0], out) == 0
    assert "resuming from" in caplog.text and "checkpoint-2" in caplog.text
    _same_as_base(out, base_out)


def test_second_sigint_mid_step_exits_130_then_rerun_is_exact(base, tmp_path, monkeypatch, capsys):
    """Ctrl-C twice inside step 4: the run stops at once (no traceback, exit 130, an "interrupted"
    manifest); re-running resumes from checkpoint-2 and equals the uninterrupted run."""
    from prefopt.training.trainers import PrefoptDPOTrainer

    _, base_out = base
    original = PrefoptDPOTrainer.training_step

    def step(self, *a, **k):
        if self.state.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        return original(self, *a, **k)

    monkeypatch.setattr(PrefoptDPOTrainer, "training_step", step)
    out = tmp_path / "run"
    assert _train(base[0], out) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted by signal 2" in err
    assert _manifest(out)["status"] == "interrupted"
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["checkpoint-2"]
    monkeypatch.setattr(PrefoptDPOTrainer, "training_step", original)
    assert _train(base[0], out) == 0
    _same_as_base(out, base_out)


# ================================================================================ damaged checkpoints
def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_safetensors_check(base, tmp_path):
    good = base[1] / "model" / "model.safetensors"
    assert safetensors_problem(good) is None
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    assert "cut short" in safetensors_problem(cut)
    long = tmp_path / "long.safetensors"
    long.write_bytes(good.read_bytes() + b"\0")
    assert "trailing" in safetensors_problem(long)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\0\0\0\0\0\0\0not json at all!")
    assert "JSON" in safetensors_problem(garbage)
    assert safetensors_problem(tmp_path / "tiny.safetensors") is not None  # missing


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"])
def test_damaged_resume_files_are_found(base, tmp_path, name):
    ck = tmp_path / "checkpoint-6"
    shutil.copytree(base[1] / "checkpoints" / "checkpoint-6", ck)
    assert checkpoint_problems(ck) == []
    _cut(ck / name, 0.9)
    problems = checkpoint_problems(ck)
    assert [p.name for p, _ in problems] == [name]


def test_truncated_last_checkpoint_falls_back_to_the_previous(base, tmp_path, caplog):
    _, base_out = base
    out = _copy_run(base_out, tmp_path / "run")
    _cut(out / "checkpoints" / "checkpoint-6" / "model.safetensors")
    assert _train(base[0], out) == 0
    assert "checkpoint-6 is damaged" in caplog.text and "model.safetensors" in caplog.text
    assert "resuming from" in caplog.text and "checkpoint-4" in caplog.text
    assert (out / "checkpoints" / "damaged-checkpoint-6").is_dir()  # kept for inspection
    _same_as_base(out, base_out)


def test_choose_checkpoint_skips_a_cut_optimizer(base, tmp_path):
    ckdir = tmp_path / "checkpoints"
    shutil.copytree(base[1] / "checkpoints", ckdir)
    _cut(ckdir / "checkpoint-6" / "optimizer.pt")
    _cut(ckdir / "checkpoint-4" / "scheduler.pt", 0.3)
    assert choose_checkpoint(ckdir).name == "checkpoint-2"
    assert sorted(p.name for p in ckdir.glob("damaged-*")) == ["damaged-checkpoint-4", "damaged-checkpoint-6"]


def test_no_intact_checkpoint_exits_2_naming_the_file(base, tmp_path, capsys):
    _, base_out = base
    out = _copy_run(base_out, tmp_path / "run")
    for ck in (out / "checkpoints").glob("checkpoint-*"):
        _cut(ck / "model.safetensors")
    assert _train(base[0], out) == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert "checkpoint-6/model.safetensors" in line and "cut short" in line and "--overwrite" in line


def test_eval_on_a_truncated_model_exits_2_naming_the_file(base, tmp_path, capsys):
    out = _copy_run(base[1], tmp_path / "run", drop=())
    _cut(out / "model" / "model.safetensors")
    assert cli.main(["eval", "--run", str(out)]) == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert str(out / "model" / "model.safetensors") in line and "cut short" in line


# ================================================================================ the lock
def test_a_busy_directory_is_refused_before_anything_in_it_changes(base, tmp_path, capsys):
    """Another process holds the run directory's lock: exit 2 naming the dir and its PID; resolved.yaml
    and everything else stay as they were."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "resolved.yaml").write_text("algorithm: simpo  # the running run's\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fh = open({str(out / rundir.LOCK_NAME)!r}, 'a+'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
            "fh.truncate(0); fh.write(f'{os.getpid()}\\n'); fh.flush(); print('held', flush=True)\n"
            "time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        assert _train(base[0], out) == 2
        line = _one_paragraph(capsys.readouterr().err)
        assert str(out) in line and f"PID {holder.pid}" in line
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
        assert (out / "resolved.yaml").read_text().startswith("algorithm: simpo")
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_file_is_harmless(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.LOCK_NAME).write_text("999999\n")  # left by a killed run: no process holds it
    with rundir.locked(out):
        assert (out / rundir.LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(Exception, match=f"PID {os.getpid()}"):  # a second holder is refused
            with rundir.locked(out):
                pass


def test_the_lock_is_released_after_a_failed_run(tmp_path, capsys):
    recipe = _make(tmp_path, data={"train": [{"source": "jsonl", "path": "missing.jsonl"}]})
    out = tmp_path / "run"
    assert _train(recipe, out) == 2
    fh = open(out / rundir.LOCK_NAME, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the failed run still held it
    finally:
        fh.close()


# ================================================================================ signals
def test_ctrl_c_during_tokenisation_exits_130_with_an_interrupted_manifest(tmp_path, monkeypatch, capsys):
    import prefopt.data.tokenized as tokenized

    def interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("SIGINT was not delivered")

    monkeypatch.setattr(tokenized, "tokenize_dataset_fast", interrupted)  # where prepare_data calls it
    out = tmp_path / "run"
    assert _train(_make(tmp_path), out) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert _manifest(out)["status"] == "interrupted"


def test_ctrl_c_outside_a_run_exits_130_without_traceback(monkeypatch, capsys, tmp_path):
    import prefopt.config.recipe

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prefopt.config.recipe, "load_recipe", interrupted)
    try:
        code = cli.main(["train", "--config", str(tmp_path / "r.yaml")])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the CLI")
    assert code == 130
    assert "Traceback" not in capsys.readouterr().err


_SLOW_WORKERS = """
import os, sys, time
import prefopt.data.fast_tokenize as ft
marks = sys.argv[1]
original = ft._work
def slow(bounds):
    open(os.path.join(marks, str(os.getpid())), "w").close()
    time.sleep(120)
    return original(bounds)
ft._work = slow
ft.default_num_proc = lambda n: 2
from prefopt import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow  # a real process tree: a subprocess that imports the whole stack
@pytest.mark.parametrize(
    ("how", "code"), [("SIGTERM to the main process", 143), ("Ctrl-C to the process group", 130)]
)
def test_tokeniser_workers_end_with_the_run(tmp_path, how, code):
    """Two tokeniser workers are busy when the signal comes: the run exits 143/130 with an
    "interrupted" manifest and no traceback, and no worker outlives it."""
    rows = [
        {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a - b)}
        for a in range(30)
        for b in range(30)
    ]
    recipe = _make(tmp_path, rows)
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SLOW_WORKERS,
            str(marks),
            "train",
            "--config",
            str(recipe),
            "--output-dir",
            str(out),
        ],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while len(list(marks.iterdir())) < 2:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "the tokeniser workers never started"
            time.sleep(0.1)
        workers = [int(p.name) for p in marks.iterdir()]
        if how.startswith("SIGTERM"):
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        time.sleep(0.5)
        assert [w for w in workers if _alive(w)] == []
        assert proc.returncode == code, err[-3000:]
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
        assert _manifest(out)["status"] == "interrupted"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ================================================================================ reference cache
def _store_entry(tmp_path: Path):
    import numpy as np

    from prefopt.training.refcache import ReferenceCache

    cache = ReferenceCache(tmp_path / "rc")
    values = {
        "ref_chosen_logps": np.arange(8, dtype=np.float32),
        "ref_rejected_logps": -np.ones(8, np.float32),
    }
    cache.store("k" * 64, {"part": 1}, values)
    return cache, "k" * 64, values


def _rewrite_values(entry: Path, scale: float) -> None:
    """Same-size overwrite of the cached values inside ``logps.arrow`` (the file stays valid Arrow)."""
    import numpy as np
    import pyarrow as pa

    path = entry / "logps.arrow"
    data = path.read_bytes()
    table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
    edited = data
    for c in table.column_names:
        values = table.column(c).to_numpy().astype(np.float32)
        edited = edited.replace(values.tobytes(), (values * scale + 1).astype(np.float32).tobytes(), 1)
    assert edited != data and len(edited) == len(data)
    path.write_bytes(edited)
    assert pa.ipc.open_file(pa.BufferReader(edited)).read_all().num_rows == table.num_rows


def test_refcache_altered_values_are_a_miss(tmp_path, caplog):
    cache, key, values = _store_entry(tmp_path)
    assert cache.lookup(key, 8) is not None
    _rewrite_values(cache.path(key), 1.5)
    assert cache.lookup(key, 8) is None
    assert "content hash" in caplog.text


def test_refcache_entry_without_a_content_hash_is_a_miss(tmp_path, caplog):
    cache, key, _ = _store_entry(tmp_path)
    meta_path = cache.path(key) / "key.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("values_sha256")
    meta_path.write_text(json.dumps(meta))
    assert cache.lookup(key, 8) is None
    assert "no content hash" in caplog.text


def test_refcache_altered_values_are_recomputed_by_prefopt_train(tmp_path):
    """Through `prefopt train`: values altered on disk are not trained on — the second run misses,
    recomputes and trains exactly like the first."""
    recipe = _make(
        tmp_path, training={"max_steps": 2}, reference_cache={"enabled": True, "dir": str(tmp_path / "rc")}
    )
    assert _train(recipe, tmp_path / "a") == 0
    first = _manifest(tmp_path / "a")
    assert [e["hit"] for e in first["reference_cache"]] == [False]
    _rewrite_values(Path(first["reference_cache"][0]["path"]), 3.0)
    assert _train(recipe, tmp_path / "b") == 0
    second = _manifest(tmp_path / "b")
    assert [e["hit"] for e in second["reference_cache"]] == [False]
    assert second["train_loss"] == pytest.approx(first["train_loss"], abs=1e-7)
    assert _train(recipe, tmp_path / "c") == 0  # the recomputed entry replaced the altered one
    assert [e["hit"] for e in _manifest(tmp_path / "c")["reference_cache"]] == [True]


@pytest.mark.parametrize("via", ["reference_cache.dir", "$PREFOPT_CACHE"])
def test_read_only_reference_cache_exits_2_naming_it(tmp_path, monkeypatch, capsys, via):
    with read_only(tmp_path / "ro") as ro:
        if via == "reference_cache.dir":
            recipe = _make(tmp_path, reference_cache={"enabled": True, "dir": str(ro / "ref")})
        else:
            monkeypatch.setenv("PREFOPT_CACHE", str(ro))
            recipe = _make(tmp_path, reference_cache={"enabled": True})
        assert _train(recipe, tmp_path / "run") == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert via in line and str(ro) in line and "not writable" in line
    assert not (tmp_path / "run" / "data_report.json").exists()  # before any data work


# ================================================================================ disk faults
def _bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


@pytest.mark.parametrize("fails", ["optimizer.pt", "model.safetensors"])
def test_full_disk_while_saving_a_checkpoint(base, tmp_path, capsys, fails):
    """The disk fills up while checkpoint-4 is written: exit 2 naming the path; checkpoint-2 stays
    whole (a copy of the directory resumes from it and equals the uninterrupted run)."""
    _, base_out = base
    ck = base_out / "checkpoints" / "checkpoint-2"
    room = 300_000 + ((ck / "model.safetensors").stat().st_size if fails == "optimizer.pt" else 0)
    with small_tmpfs(tmp_path / "disk", _bytes(ck) + room) as disk:
        out = disk / "run"
        assert _train(base[0], out) == 2
        line = _one_paragraph(capsys.readouterr().err)
        assert str(out / "checkpoints" / "checkpoint-4") in line
        assert "checkpoint-2" in line and "intact" in line and "free space" in line
        assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["checkpoint-2"]
        assert not (out / "checkpoints" / "checkpoint-4").exists()  # the cut one never counts
        assert checkpoint_problems(out / "checkpoints" / "checkpoint-2") == []
        saved = _copy_run(out, tmp_path / "copy", drop=())
    if fails == "optimizer.pt":
        assert _train(base[0], saved) == 0
        _same_as_base(saved, base_out)


# ================================================================================ output.dir
def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert _train(_make(tmp_path), tmp_path / "taken") == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert str(tmp_path / "taken") in line and "is a file" in line


def test_output_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    assert _train(_make(tmp_path), tmp_path / "taken" / "run") == 2
    assert "which is a file" in _one_paragraph(capsys.readouterr().err)


@pytest.mark.parametrize("inside", [False, True], ids=["the-dir", "a-new-dir-inside"])
def test_read_only_output_dir(tmp_path, capsys, inside):
    recipe = _make(tmp_path)
    with read_only(tmp_path / "ro") as ro:
        out = ro / "run" if inside else ro
        assert _train(recipe, out) == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert str(out) in line and "cannot write" in line


@pytest.mark.parametrize(
    ("template", "expected"),
    [("runs/{algo}-{seed}", "unknown placeholder {algo}"), ("runs/{seed", "not a valid directory template")],
)
def test_output_dir_template_is_checked_before_data_work(tmp_path, capsys, monkeypatch, template, expected):
    """An unknown or malformed {placeholder}: exit 2 naming output.dir — before the data is read (the
    recipe's data file does not even exist)."""
    monkeypatch.chdir(tmp_path)
    recipe = _make(
        tmp_path, data={"train": [{"source": "jsonl", "path": "missing.jsonl"}]}, output={"dir": template}
    )
    assert _train(recipe, None) == 2
    line = _one_paragraph(capsys.readouterr().err)
    assert "output.dir" in line and expected in line and "{algorithm}" in line
    assert str(recipe) in line
