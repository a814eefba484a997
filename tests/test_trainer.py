"""Training runs end to end: resume after kill -9 is bitwise identical, SIGTERM checkpoints and exits 0, corrupt or
half-written checkpoints, non-finite losses, load_path and bad configs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT

from olmo_jax.checkpoint import CheckpointError
from olmo_jax.config import ConfigError, load_config
from olmo_jax.monitor import read_metrics
from olmo_jax.trainer import Layout, TrainingError, train

MICRO = ROOT / "tests" / "configs" / "micro.py"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token ids with structure (a repeating pattern plus noise) so the loss can fall."""
    rng = np.random.default_rng(0)
    pattern = np.tile(np.arange(40), 500)
    noise = rng.integers(0, 250, pattern.size)
    ids = np.where(rng.random(pattern.size) < 0.8, pattern, noise).astype(np.uint16)
    path = tmp_path_factory.mktemp("data") / "tokens.npy"
    ids.tofile(path)
    return path


def _overrides(tokens: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.paths={tokens}", f"save_folder={run_dir}", *extra]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


def _cli(tokens: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "olmo_jax.train", f"--config={MICRO}",
            *(f"--config.{o}" for o in _overrides(tokens, run_dir, *extra))]
    env = os.environ | {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def straight(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("straight")
    assert train(load_config(MICRO, _overrides(tokens, run_dir))) == 12
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < losses[1]
    return losses


def test_run_writes_checkpoints_metrics_and_config(tokens: Path, tmp_path: Path) -> None:
    train(load_config(MICRO, _overrides(tokens, tmp_path, "max_duration=8", "save_interval=3")))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert steps == [3, 6, 8]  # every save_interval and at the end
    meta = json.loads((tmp_path / "checkpoints/8/meta/metadata").read_text())
    assert meta["step"] == 8 and meta["tokens_seen"] == 8 * 8 * 16
    assert meta["data_fingerprint"]["paths"] == [str(tokens)] and meta["data_fingerprint"]["seed"] == 6198
    assert meta["model"]["d_model"] == 32 and "jax" in meta["versions"]
    record = read_metrics(tmp_path / "metrics.jsonl")[-1]
    assert {"train/loss", "train/lr", "train/grad_norm", "throughput/tokens_per_second"} <= set(record)
    assert json.loads((tmp_path / "train_config.json").read_text())["save_folder"] == str(tmp_path)


def test_in_loop_evaluation_is_logged(tokens: Path, tmp_path: Path) -> None:
    from olmo_jax.evaluate import EvaluatorConfig

    config = load_config(MICRO, _overrides(tokens, tmp_path, "eval_interval=4", "stop_at=8"))
    config = dataclasses.replace(config, evaluators=(EvaluatorConfig("held", "perplexity", (str(tokens),), 16),))
    train(config)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "eval/held/CrossEntropyLoss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert evals[1]["eval/held/CrossEntropyLoss"] < evals[0]["eval/held/CrossEntropyLoss"]
    assert evals[1]["eval/held/Perplexity"] == pytest.approx(np.exp(evals[1]["eval/held/CrossEntropyLoss"]), rel=1e-5)


def test_stop_at_ends_early_without_changing_the_schedule(tokens: Path, tmp_path: Path,
                                                          straight: dict[int, float]) -> None:
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=5")))
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[-1]["step"] == 5
    assert [r["train/loss"] for r in records] == [straight[s] for s in range(1, 6)]


def test_in_process_resume_is_bitwise_identical(tokens: Path, tmp_path: Path, straight: dict[int, float]) -> None:
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=6")))
    train(load_config(MICRO, _overrides(tokens, tmp_path)))
    assert _losses(tmp_path) == straight


def test_kill_9_then_resume_is_bitwise_identical(tokens: Path, tmp_path: Path, straight: dict[int, float]) -> None:
    proc = _cli(tokens, tmp_path, "save_interval=2")
    _wait_for(lambda: (tmp_path / "checkpoints" / "6").exists() and 7 in _safe_losses(tmp_path), proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    resumed = _cli(tokens, tmp_path, "save_interval=2")
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err[-2000:]
    assert "resumed from" in out
    assert _losses(tmp_path) == straight


def _safe_losses(run_dir: Path) -> dict[int, float]:
    try:
        return _losses(run_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_checkpoints_exits_0_and_the_rerun_continues(tokens: Path, tmp_path: Path,
                                                                       sig: signal.Signals) -> None:
    long = ("max_duration=2000", "save_interval=1000")  # long enough that the signal lands mid-run
    proc = _cli(tokens, tmp_path / "run", *long)
    _wait_for(lambda: 3 in _safe_losses(tmp_path / "run"), proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert f"Stopped by {sig.name}" in out
    stopped_at = max(_losses(tmp_path / "run"))
    assert stopped_at < 2000
    assert [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()] == [stopped_at]
    rerun = _cli(tokens, tmp_path / "run", *long, f"stop_at={stopped_at + 3}")
    _, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err[-2000:]
    train(load_config(MICRO, _overrides(tokens, tmp_path / "straight", *long, f"stop_at={stopped_at + 3}")))
    assert _losses(tmp_path / "run") == _losses(tmp_path / "straight")


def test_half_written_checkpoint_is_ignored(tokens: Path, tmp_path: Path, straight: dict[int, float]) -> None:
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=4")))
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(ckpts / "4", ckpts / "8.orbax-checkpoint-tmp")  # what a kill mid-save leaves
    shutil.rmtree(ckpts / "8.orbax-checkpoint-tmp" / "params")
    train(load_config(MICRO, _overrides(tokens, tmp_path)))
    assert _losses(tmp_path) == straight


def test_corrupt_checkpoint_is_rejected_clearly(tokens: Path, tmp_path: Path) -> None:
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=8")))
    for path in (tmp_path / "checkpoints" / "8" / "params").rglob("*"):
        if path.is_file() and path.name != "_METADATA" and "manifest" not in path.name:
            path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"step 8 .*[Dd]elete .*checkpoints/8 to fall back to (the previous )?"
                                              r"step 4"):
        train(load_config(MICRO, _overrides(tokens, tmp_path)))


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tokens: Path, tmp_path: Path) -> None:
    from olmo_jax.checkpoint import load_params

    config = load_config(MICRO, _overrides(tokens, tmp_path, "optimizer.learning_rate=1e30", "save_interval=1",
                                           "scheduler.name=constant"))
    with pytest.raises(TrainingError, match=r"Non-finite training signal at step (\d+).*last good checkpoint is step "
                                            r"(\d+)") as error:
        train(config)
    bad_step, kept = (int(x) for x in re.search(r"at step (\d+).*checkpoint is step (\d+)", str(error.value)).groups())
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir())
    assert steps[-1] == kept == bad_step - 1 < 12  # stopped before the bad update; nothing after it was saved
    _, params, _ = load_params(tmp_path)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_resume_with_different_data_is_refused_unless_allowed(tokens: Path, tmp_path: Path) -> None:
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=4")))
    other = tmp_path / "other.npy"
    np.fromfile(tokens, np.uint16)[:-16].tofile(other)
    with pytest.raises(TrainingError, match=r"data \(paths, sizes\)"):
        train(load_config(MICRO, _overrides(other, tmp_path)))
    with pytest.raises(TrainingError, match=r"does not fit config\.model .*\n  - model\.d_model: 32 vs 64"):
        train(load_config(MICRO, _overrides(tokens, tmp_path, "model.d_model=64")))
    with pytest.raises(TrainingError, match=r"data \(global_train_batch_size\): \[8\] vs \[4\]"):
        train(load_config(MICRO, _overrides(tokens, tmp_path, "global_train_batch_size=4")))
    with pytest.raises(TrainingError, match=r"model\.clip_qkv: None vs 2\.0"):
        train(load_config(MICRO, _overrides(tokens, tmp_path, "model.clip_qkv=2.0")))
    assert train(load_config(MICRO, _overrides(other, tmp_path, "allow_resume_mismatch=True"))) == 12


def test_load_path_weights_only_and_full_state(tokens: Path, tmp_path: Path, straight: dict[int, float]) -> None:
    first = tmp_path / "first"
    train(load_config(MICRO, _overrides(tokens, first, "stop_at=6")))
    full = tmp_path / "full"
    train(load_config(MICRO, _overrides(tokens, full, f"load_path={first}")))
    assert _losses(full) == {s: straight[s] for s in range(7, 13)}  # continues exactly where `first` stopped
    weights = tmp_path / "weights"
    train(load_config(MICRO, _overrides(tokens, weights, f"load_path={first}", "reset_optimizer_state=True",
                                        "stop_at=2")))
    losses = _losses(weights)
    assert sorted(losses) == [1, 2]  # a new run at step 0: batch 0 again, from trained weights
    assert losses[1] < straight[1] and losses[1] != straight[7]


def test_load_path_from_hf_directory(tokens: Path, tmp_path: Path) -> None:
    from olmo_jax.checkpoint import load_params
    from olmo_jax.hf import save_hf

    train(load_config(MICRO, _overrides(tokens, tmp_path / "a", "stop_at=6")))
    config, params, _ = load_params(tmp_path / "a")
    save_hf(config, params, tmp_path / "hf")
    train(load_config(MICRO, _overrides(tokens, tmp_path / "b", f"load_path={tmp_path / 'hf'}", "stop_at=1")))
    train(load_config(MICRO, _overrides(tokens, tmp_path / "c", f"load_path={tmp_path / 'a'}",
                                        "reset_optimizer_state=True", "stop_at=1")))
    assert _losses(tmp_path / "b") == _losses(tmp_path / "c")  # the same weights, whichever way they came
    with pytest.raises(TrainingError, match=r"model\.clip_qkv: None vs 8\.0"):
        train(load_config(MICRO, _overrides(tokens, tmp_path / "d", f"load_path={tmp_path / 'hf'}",
                                            "model.clip_qkv=8.0")))


def test_weights_only_checkpoint_in_the_run_directory_starts_from_its_weights(tokens: Path, tmp_path: Path) -> None:
    from olmo_jax.checkpoint import load_params, save_params

    train(load_config(MICRO, _overrides(tokens, tmp_path / "a", "stop_at=6")))
    config, params, _ = load_params(tmp_path / "a")
    save_params(tmp_path / "b", config, params)  # what tools/convert_from_hf.py writes
    train(load_config(MICRO, _overrides(tokens, tmp_path / "b", "stop_at=1")))
    train(load_config(MICRO, _overrides(tokens, tmp_path / "c", f"load_path={tmp_path / 'a'}",
                                        "reset_optimizer_state=True", "stop_at=1")))
    assert _losses(tmp_path / "b") == _losses(tmp_path / "c")


def test_resumed_metrics_record_each_step_once(tokens: Path, tmp_path: Path) -> None:
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=6", "save_interval=4")))
    shutil.rmtree(tmp_path / "checkpoints" / "6")  # as if killed after logging steps 5 and 6
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=8")))
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_batch_arithmetic_error_names_all_three() -> None:
    config = load_config(MICRO, ["global_train_batch_size=12", "device_train_microbatch_size=4"])
    with pytest.raises(ConfigError, match=r"global_train_batch_size=12 .*device_train_microbatch_size=4 "
                                          r".*data-parallel size=2"):
        Layout.of(config, 2)
    assert Layout.of(config, 1).grad_accum == 3


def test_missing_data_file_is_one_clear_cli_error(tmp_path: Path) -> None:
    proc = _cli(tmp_path / "nope.npy", tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.strip().startswith("error:") and "nope.npy does not exist" in err and "Traceback" not in err
