"""The faults a long run meets (docs/failure-modes.md): each is one clear error or a clean recovery, and nothing
olmo_jax writes replaces a user's file or a good checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, write_patterned_tokens

from olmo_jax.config import load_config
from olmo_jax.errors import ConfigError, TrainingError
from olmo_jax.train.metrics import read_metrics
from olmo_jax.train.trainer import train

pytestmark = pytest.mark.slow
MICRO = ROOT / "tests" / "configs" / "micro.py"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_patterned_tokens(tmp_path_factory.mktemp("data") / "tokens.npy", 500)


def _config(tokens: Path, run_dir: Path, *extra: str):
    return load_config(MICRO, [f"data.paths={tokens}", f"save_folder={run_dir}", *extra])


def _cli(tokens: Path, run_dir: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "olmo_jax.train", f"--config={MICRO}", f"--config.data.paths={tokens}",
            f"--config.save_folder={run_dir}", *(f"--config.{e}" for e in extra)]
    env = os.environ | {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _only_an_error_line(proc: subprocess.CompletedProcess, starts: str) -> None:
    """rc 1 and stderr one `error:` line (what tqdm draws aside): no traceback, also none from Orbax's threads."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {starts}"), proc.stderr[-3000:]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_optimizer_on_resume_is_refused_unless_allowed(tokens: Path, tmp_path: Path) -> None:
    """A resume with a 1e6 learning rate used to be accepted silently (and wrecked the model in one step)."""
    train(_config(tokens, tmp_path, "stop_at=4"))
    with pytest.raises(TrainingError, match=r"(?s)other optimizer settings.*optimizer\.learning_rate: 0\.003 vs "
                                            r"1000000\.0.*allow_optimizer_change=True"):
        train(_config(tokens, tmp_path, "optimizer.learning_rate=1e6"))
    with pytest.raises(TrainingError, match=r"scheduler\.t_max: 12 vs 20"):  # a longer schedule is another schedule
        train(_config(tokens, tmp_path, "max_duration=20"))
    with pytest.raises(TrainingError, match=r"max_grad_norm: 1\.0 vs 0\.5"):
        train(_config(tokens, tmp_path, "max_grad_norm=0.5"))
    assert train(_config(tokens, tmp_path, "max_duration=20", "stop_at=6", "allow_optimizer_change=True")) == 6


def test_a_max_duration_below_the_checkpoint_is_an_error_and_writes_nothing(tokens: Path, tmp_path: Path) -> None:
    """It used to exit 0 ("Nothing to do") after overwriting train_config.json."""
    train(_config(tokens, tmp_path, "stop_at=6"))
    before = _snapshot(tmp_path)
    with pytest.raises(TrainingError, match=r"is at step 6, past this run's last step 4 .*Nothing was written"):
        train(_config(tokens, tmp_path, "stop_at=4", "allow_optimizer_change=True"))
    assert _snapshot(tmp_path) == before
    assert train(_config(tokens, tmp_path, "stop_at=6")) == 6  # already there: nothing to do, nothing written
    assert _snapshot(tmp_path) == before


def test_a_stop_request_before_the_first_step_exits_cleanly(tokens: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    """SIGTERM during start-up used to get the default action (rc 143, no message); now the stop handler is there
    from the start of train(), and a stop before the first step ends the run having written nothing."""
    from olmo_jax.train import trainer

    real = trainer.build_run

    def build_then_signal(config):
        run = real(config)
        os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler sends while the run is still starting
        return run

    monkeypatch.setattr(trainer, "build_run", build_then_signal)
    assert train(_config(tokens, tmp_path)) == 0
    assert "Stopped by SIGTERM before the first step; nothing was written" in capsys.readouterr().out
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_a_start_up_error_is_one_line(tokens: Path, tmp_path: Path) -> None:
    """An error during start-up (a load_path that does not exist) used to be followed by a traceback from Orbax's
    background thread (RuntimeError: cannot schedule new futures after interpreter shutdown)."""
    proc = _cli(tokens, tmp_path, f"load_path={tmp_path / 'nope'}")
    _only_an_error_line(proc, f"Checkpoint path {tmp_path / 'nope'} does not exist")
    assert not (tmp_path / "checkpoints").exists()


def test_an_error_mid_run_is_one_line_and_keeps_the_checkpoints(tokens: Path, tmp_path: Path) -> None:
    """A bad token id found at step 5, with the checkpoint writer open and a save in flight: one line naming the
    id and the last good checkpoint, and no traceback from Orbax's threads at exit."""
    bad = tmp_path / "bad.npy"
    ids = np.fromfile(tokens, np.uint16)
    ids[:] = np.minimum(ids, 249)
    from olmo_jax.data.order import Batches
    from olmo_jax.data.token_files import TokenFiles

    batches = Batches(TokenFiles([tokens], "uint16", 16), 6198, 8, 2)
    first = int(batches.instance_ids(4).reshape(-1)[0])  # an instance of batch 4: step 5's batch
    ids[first * 16 + 3] = 255
    ids.tofile(bad)
    proc = _cli(bad, tmp_path / "run", "save_interval=2")
    _only_an_error_line(proc, "Token id 255 at token")
    assert "the last good checkpoint is step 4" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["2", "4"]


def test_a_torn_metrics_line_is_dropped_on_resume(tokens: Path, tmp_path: Path) -> None:
    """A partial last line in metrics.jsonl (a full disk or a power cut) used to crash every resume."""
    train(_config(tokens, tmp_path, "stop_at=4"))
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 5, "train/lo')
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4]  # readers skip it too
    train(_config(tokens, tmp_path, "stop_at=6"))
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "64m"):
    """A tmpfs at `path` (needs root; the test is skipped where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def test_a_read_only_save_folder_is_one_error_before_anything(tokens: Path, tmp_path: Path) -> None:
    """A read-only save folder, fresh or resumed, used to end in OSError tracebacks."""
    with _tmpfs(tmp_path / "mnt") as mnt:
        train(_config(tokens, mnt / "run", "stop_at=4"))
        _remount(mnt, "ro")
        with pytest.raises(ConfigError, match=rf"save_folder={mnt / 'run'} cannot be written \(Read-only file "
                                              r"system"):
            train(_config(tokens, mnt / "run"))
        with pytest.raises(ConfigError, match=rf"save_folder={mnt / 'fresh'} cannot be written"):
            train(_config(tokens, mnt / "fresh"))
        proc = _cli(tokens, mnt / "run")
        _only_an_error_line(proc, f"save_folder={mnt / 'run'} cannot be written")
        _remount(mnt, "rw")
        assert train(_config(tokens, mnt / "run", "stop_at=6")) == 6


def test_a_full_disk_ends_the_run_naming_the_step_and_the_last_checkpoint(tokens: Path, tmp_path: Path) -> None:
    """A save that hit ENOSPC used to surface one save later as chained tracebacks; now the run ends at once with
    one line, earlier checkpoints stay, and a rerun after space is freed resumes."""
    with _tmpfs(tmp_path / "mnt", size="2m") as mnt:
        run = mnt / "run"
        train(_config(tokens, run, "stop_at=4", "save_interval=2", "tensorboard=False"))
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(filler, filler.stat().st_size - 160 * 1024)  # room for metrics lines, not for a checkpoint
        proc = _cli(tokens, run, "save_interval=2", "tensorboard=False")
        _only_an_error_line(proc, f"Saving checkpoint step 6 to {run / 'checkpoints'} failed: the disk is full")
        assert "the last complete checkpoint is step 4" in proc.stderr
        assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
        filler.unlink()
        resumed = _config(tokens, run, "save_interval=2", "tensorboard=False", "save_num_checkpoints_to_keep=2")
        assert train(resumed) == 12
        steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
        assert steps == list(range(1, 13))


def test_uint32_ids_read_as_uint16_are_refused(tmp_path: Path) -> None:
    """A uint32 token file read with the default uint16 used to train to the end, exit 0 (half the ids zeros)."""
    from olmo_jax.data.token_files import TokenFiles
    from olmo_jax.errors import DataError

    ids = np.random.default_rng(0).integers(2, 250, 4096).astype(np.uint32)
    ids.tofile(tmp_path / "wide.npy")
    with pytest.raises(DataError, match=r"wide\.npy looks like uint32 ids read as uint16 .*memmap_dtype=uint32"):
        TokenFiles([tmp_path / "wide.npy"], "uint16", 16)
    assert TokenFiles([tmp_path / "wide.npy"], "uint32", 16).num_instances == 256
    ids.astype(np.uint16).tofile(tmp_path / "narrow.npy")  # the same ids as uint16: fine
    assert TokenFiles([tmp_path / "narrow.npy"], "uint16", 16).num_instances == 256
    (tmp_path / "narrow.npy.json").write_text(json.dumps({"dtype": "uint32"}))  # what prepare_data records
    with pytest.raises(DataError, match=r"holds uint32 ids \(its manifest .*narrow\.npy\.json says so\)"):
        TokenFiles([tmp_path / "narrow.npy"], "uint16", 16)


def test_a_directory_as_a_data_path_says_it_is_a_directory(tmp_path: Path) -> None:
    from olmo_jax.data.token_files import TokenFiles
    from olmo_jax.errors import DataError

    with pytest.raises(DataError, match=r"is a directory; give the token files in it"):
        TokenFiles([tmp_path], "uint16", 16)


def test_metadata_of_the_wrong_types_names_the_step_and_the_fallback(tokens: Path, tmp_path: Path) -> None:
    from olmo_jax.errors import CheckpointDamagedError
    from olmo_jax.train.checkpoint import load_params

    train(_config(tokens, tmp_path, "stop_at=8"))
    meta_file = tmp_path / "checkpoints" / "8" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["model"]["d_model"] = "thirty-two"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointDamagedError, match=r"Checkpoint step 8 in .*: its metadata holds no usable model "
                                                     r"config .*The previous checkpoint is step 4"):
        load_params(tmp_path)
    assert train(_config(tokens, tmp_path, "stop_at=10")) == 10  # resume falls back to step 4 and sets 8 aside
    assert (tmp_path / "checkpoints" / "8.damaged").is_dir()


def test_readers_of_a_live_run_never_fail(tokens: Path, tmp_path: Path) -> None:
    """eval, generate, convert and load_path read a run that saves every step and keeps one checkpoint (6 of 12
    readers used to fail with keep 2, 33 of 34 with keep 1, and advise deleting a healthy step): a reader whose step
    is rotated away reads the newest one left, and never calls a vanished step damaged."""
    from olmo_jax.train.checkpoint import load_params

    run_dir = tmp_path / "live"
    args = [sys.executable, "-m", "olmo_jax.train", f"--config={MICRO}", f"--config.data.paths={tokens}",
            f"--config.save_folder={run_dir}", "--config.max_duration=100000", "--config.save_interval=1",
            "--config.save_num_checkpoints_to_keep=1", "--config.console_log_interval=1000",
            "--config.tensorboard=False"]
    env = os.environ | {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    writer = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.monotonic() + 120
        while not any(p.name.isdigit() for p in (run_dir / "checkpoints").glob("*")) if (
                run_dir / "checkpoints").is_dir() else True:
            assert writer.poll() is None and time.monotonic() < deadline, writer.stderr.read()[-2000:]
            time.sleep(0.05)
        steps = []
        for _ in range(20):
            _, _, meta = load_params(run_dir)  # eval, generate and tools/convert_to_hf.py read through this
            steps.append(meta["step"])
        convert = subprocess.run([sys.executable, "tools/convert_to_hf.py", "--checkpoint", str(run_dir), "--output",
                                  str(tmp_path / "hf"), "--no-tokenizer"], cwd=ROOT, env=env, capture_output=True,
                                 text=True, timeout=300)
        assert convert.returncode == 0, convert.stderr[-2000:]
        assert train(_config(tokens, tmp_path / "from_live", f"load_path={run_dir}", "stop_at=1",
                             "reset_optimizer_state=True")) == 1
        assert writer.poll() is None, "the writer died"
        assert steps == sorted(steps) and steps[-1] > steps[0]  # the run moved on while it was read
        assert list((run_dir / "checkpoints" / ".readers").iterdir()) == []  # every reader released its lease
    finally:
        writer.kill()
        writer.wait()


GUARD = ("loss_spike_guard.enabled=True", "loss_spike_guard.window=4", "loss_spike_guard.sigma=3.0",
         "loss_spike_guard.max_skips=2")


def test_a_forced_divergence_stops_before_its_state_is_checkpointed(tokens: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Resumed (deliberately) with a learning rate of 1e6: the first update wrecks the model, the next steps' losses
    spike, their updates are skipped, and after max_skips the run stops; the checkpoint of the wrecking step is set
    aside and nothing after it is saved, so the last good checkpoint is where it was."""
    train(_config(tokens, tmp_path, "stop_at=8", "save_interval=1", *GUARD))
    with pytest.raises(TrainingError, match=r"(?s)Loss spikes at steps 10-12: more than loss_spike_guard\.max_skips=2 "
                                            r"in a row.*stopped before checkpointing that state; the last good "
                                            r"checkpoint is step 8.*step 9, whose state spiked, is kept aside"):
        train(_config(tokens, tmp_path, "save_interval=1", "optimizer.learning_rate=1e6",
                      "allow_optimizer_change=True", *GUARD))
    assert capsys.readouterr().out.count("its update was skipped") == 2  # steps 10 and 11; 12 is one too many
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["5", "6", "7", "8", "9.suspect"]  # keep 5: saving 9 rotated 4 out; 8 is intact
    records = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl")}
    assert records[10]["train/skipped"] == 1.0 and records[10]["train/loss"] > 3 * records[8]["train/loss"]


def test_a_single_spike_is_skipped_and_the_run_goes_on(tokens: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """A poisoned batch (ids the run has barely seen, at random) at step 9: its loss spikes, its update is skipped,
    and training goes on from the state before it, to the end."""
    from olmo_jax.data.order import Batches
    from olmo_jax.data.token_files import TokenFiles

    ids = np.fromfile(tokens, np.uint16).copy()
    rng = np.random.default_rng(1)
    for instance in Batches(TokenFiles([tokens], "uint16", 16), 6198, 8, 2).instance_ids(8).reshape(-1):
        ids[instance * 16:(instance + 1) * 16] = rng.integers(100, 250, 16)
    poisoned = tmp_path / "poisoned.npy"
    ids.tofile(poisoned)
    assert train(_config(poisoned, tmp_path / "run", *GUARD)) == 12
    out = capsys.readouterr().out
    assert "warning: step 9: loss" in out and out.count("its update was skipped") == 1
    records = {r["step"]: r for r in read_metrics(tmp_path / "run" / "metrics.jsonl")}
    assert records[9]["train/skipped"] == 1.0 and all(records[s]["train/skipped"] == 0.0 for s in (8, 10, 11, 12))

