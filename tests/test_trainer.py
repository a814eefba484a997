"""Training runs end to end: resume after kill -9 is bitwise identical, SIGTERM checkpoints and exits 0, corrupt or
half-written checkpoints, non-finite losses, load_path and bad configs."""

from __future__ import annotations

import contextlib
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
from conftest import ROOT, write_patterned_tokens

from olmo_jax.config import load_config
from olmo_jax.data.order import BatchSplit
from olmo_jax.errors import CheckpointError, ConfigError, TrainingError
from olmo_jax.train.metrics import read_metrics
from olmo_jax.train.trainer import train

pytestmark = pytest.mark.slow

MICRO = ROOT / "tests" / "configs" / "micro.py"


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token ids with structure (a repeating pattern plus noise) so the loss can fall."""
    return write_patterned_tokens(tmp_path_factory.mktemp("data") / "tokens.npy", 500)


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
    from olmo_jax.eval.config import EvaluatorConfig

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


def _array_files(step_dir: Path) -> list[Path]:
    """The files holding a checkpoint step's array data (Orbax's OCDBT data files), largest first."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage"])
def test_a_damaged_checkpoint_is_refused_and_resume_falls_back(tokens: Path, tmp_path: Path,
                                                               straight: dict[int, float], damage: str,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A truncated array file, 64 bytes flipped in place (the same size: before checksums this resumed on garbage
    weights), or every file overwritten: the step is refused, kept aside as `8.damaged`, and the run resumes from
    the newest step that verifies, with the losses of an unbroken run."""
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=8")))
    params = tmp_path / "checkpoints" / "8" / "params"
    if damage == "garbage":
        for path in params.rglob("*"):
            if path.is_file() and path.name != "_METADATA" and "manifest" not in path.name:
                path.write_bytes(b"garbage")
    else:
        target = _array_files(params)[0]
        data = bytearray(target.read_bytes())
        if damage == "truncated":
            data = data[:len(data) // 2]
        else:
            middle = len(data) // 2
            data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
        target.write_bytes(bytes(data))
    capsys.readouterr()
    train(load_config(MICRO, _overrides(tokens, tmp_path)))
    err = capsys.readouterr().err
    assert "warning: Checkpoint step 8" in err and "damaged" in err and "8.damaged" in err
    assert (tmp_path / "checkpoints" / "8.damaged").is_dir()
    assert _losses(tmp_path) == straight  # steps 5-8 redone from step 4, the same as the first time


def test_a_reader_refuses_a_damaged_step_naming_it(tokens: Path, tmp_path: Path) -> None:
    from olmo_jax.errors import CheckpointDamagedError
    from olmo_jax.train.checkpoint import load_params

    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=8")))
    target = _array_files(tmp_path / "checkpoints" / "8" / "opt_state")[0]
    data = bytearray(target.read_bytes())
    data[10:74] = bytes(b ^ 0x5A for b in data[10:74])
    target.write_bytes(bytes(data))
    load_params(tmp_path)  # the weights are intact: readers of the weights are unaffected
    target = _array_files(tmp_path / "checkpoints" / "8" / "params")[0]
    data = bytearray(target.read_bytes())
    middle = len(data) // 2  # inside an array's values: the file still decodes, only the checksum can tell
    data[middle:middle + 64] = bytes(b ^ 0x5A for b in data[middle:middle + 64])
    target.write_bytes(bytes(data))
    with pytest.raises(CheckpointDamagedError, match=r"step 8 .* is damaged: 1 array\(s\) of params do not match "
                                                     r".*The previous checkpoint is step 4"):
        load_params(tmp_path)
    assert (tmp_path / "checkpoints" / "8").is_dir()  # a reader moves nothing


def test_when_every_checkpoint_is_damaged_nothing_is_changed(tokens: Path, tmp_path: Path) -> None:
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=4", "save_interval=2")))
    for step in ("2", "4"):
        target = _array_files(tmp_path / "checkpoints" / step / "params")[0]
        target.write_bytes(target.read_bytes()[:10])
    with pytest.raises(CheckpointError, match=r"(?s)Every checkpoint in .* is damaged.*byte range.*Nothing was "
                                              r"changed"):
        train(load_config(MICRO, _overrides(tokens, tmp_path)))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tokens: Path, tmp_path: Path) -> None:
    from olmo_jax.train.checkpoint import load_params

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
    from olmo_jax.model.hf import save_hf
    from olmo_jax.train.checkpoint import load_params

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
    from olmo_jax.train.checkpoint import load_params, save_params

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
        BatchSplit.of(config.global_train_batch_size, config.device_train_microbatch_size, 2)
    assert BatchSplit.of(config.global_train_batch_size, config.device_train_microbatch_size, 1).grad_accum == 3


def test_missing_data_file_is_one_clear_cli_error(tmp_path: Path) -> None:
    proc = _cli(tmp_path / "nope.npy", tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.strip().startswith("error:") and "nope.npy does not exist" in err and "Traceback" not in err


def test_each_part_of_a_run_builds_alone(tokens: Path, tmp_path: Path) -> None:
    """The factories build one part each: the step without data or checkpoints, the data without a step."""
    from olmo_jax.parallel.mesh import make_mesh
    from olmo_jax.train.trainer import make_checkpointer, make_data, make_evaluators, make_step

    config = load_config(MICRO, _overrides(tokens, tmp_path))
    mesh = make_mesh(config.mesh)
    jitted = make_step(config, mesh)
    state = jitted.init(jax.random.key(0))
    assert int(state.step) == 0 and jitted.abstract_state.params.keys() == state.params.keys()
    batches = make_data(config, BatchSplit.of(8, 4, 1))
    assert batches.batch_at(0).shape == (2, 4, 16)
    assert make_evaluators(config) is None  # micro.py has none
    assert not (tmp_path / "checkpoints").exists()  # nothing above writes
    make_checkpointer(config).close()
    assert (tmp_path / "checkpoints").is_dir()


def test_the_loop_moves_values_to_the_host_only_where_it_names_it(tokens: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Under jax.transfer_guard_device_to_host("disallow") (enforced on GPUs; on a CPU a jax array is host memory
    and the guard never fires), and with jax arrays' scalar conversions (bool, float, int, format, item, tolist,
    device_get) made to fail outside `host_sync` regions, a run's loop completes: its only transfer per step is the
    health flag of the step before; the last step adds the logged metrics and the checkpoint."""
    from jax._src import array as jax_array

    from olmo_jax.train import hooks as hooks_module
    from olmo_jax.train import trainer as trainer_module
    from olmo_jax.train.hooks import LogMetrics
    from olmo_jax.train.metrics import MetricsWriter
    from olmo_jax.train.signals import StopRequest
    from olmo_jax.train.throughput import SpeedMonitor
    from olmo_jax.train.trainer import build_run, make_checkpointer, make_hooks, run_loop

    config = load_config(MICRO, _overrides(tokens, tmp_path, "max_duration=6", "console_log_interval=100",
                                           "save_interval=100"))
    run = build_run(config)
    run.checkpointer = make_checkpointer(config)
    state = run.step.init(jax.random.key(0))
    syncs: list[str] = []
    inside = []
    real_sync = hooks_module.host_sync

    @contextlib.contextmanager
    def counted(why: str):
        syncs.append(why.split(":")[0])
        inside.append(True)
        try:
            with real_sync(why):
                yield
        finally:
            inside.pop()

    def guarded(name: str, original: object):
        def check(self: object, *args: object, **kwargs: object) -> object:
            if not inside:
                raise AssertionError(f"a device-to-host transfer ({name}) outside host_sync")
            return original(self, *args, **kwargs)
        return check

    cls = jax_array.ArrayImpl
    value = cls.__dict__["_value"]
    monkeypatch.setattr(cls, "_value", property(guarded("_value", value.fget)))
    monkeypatch.setattr(cls, "item", guarded("item", cls.item))
    monkeypatch.setattr(hooks_module, "host_sync", counted)
    monkeypatch.setattr(trainer_module, "host_sync", counted)
    writer = MetricsWriter(tmp_path, 0, tensorboard=False)
    speed = SpeedMonitor(run.tokens_per_step, config.model.flops_per_token(), 1)
    log = LogMetrics(config.console_log_interval, writer, speed, run.tokens_per_step, print)
    hooks = make_hooks(run, StopRequest(), writer, log, print)
    try:
        with jax.transfer_guard_device_to_host("disallow"):
            step, _ = run_loop(run, state, 0, hooks, speed)
    finally:
        writer.close()
        run.checkpointer.wait()
        run.checkpointer.close()
    assert step == 6
    assert syncs == ["health"] * 6 + ["log step", "checkpoint"]
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [6]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [6]
    with pytest.raises(AssertionError, match="outside host_sync"):  # the spy itself works
        float(state.step)


def test_logged_lr_is_read_from_the_optimizer_state(tokens: Path, tmp_path: Path, straight: dict[int, float]) -> None:
    from olmo_jax.train.optim import lr_schedule

    config = load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=4"))
    train(config)
    schedule = lr_schedule(config.scheduler, config.optimizer.learning_rate, config.max_duration)
    for record in read_metrics(tmp_path / "metrics.jsonl"):
        assert record["train/lr"] == pytest.approx(float(schedule(record["step"] - 1)), rel=1e-6)
    from olmo_jax.train.checkpoint import load_params

    _, _, meta = load_params(tmp_path)
    assert meta["opt_state_layout"] == 2 and meta["run"] == {"dtype": "float32", "attention_impl": "auto",
                                                             "remat": "none"}
    assert "compute_dtype" not in meta["model"] and "remat" not in meta["model"]


def test_run_options_are_the_runs_choice_on_resume(tokens: Path, tmp_path: Path, straight: dict[int, float]) -> None:
    """How the model runs is not part of a checkpoint's model: resuming with other run options is allowed and
    continues the same losses (remat and the XLA attention change no result in fp32)."""
    train(load_config(MICRO, _overrides(tokens, tmp_path, "stop_at=6", "model.remat=full")))
    train(load_config(MICRO, _overrides(tokens, tmp_path, "model.attention_impl=xla")))
    losses = _losses(tmp_path)
    assert sorted(losses) == list(range(1, 13))
    for step, loss in straight.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5)


def test_a_checkpoint_of_olmo_jax_0_1_resumes(tokens: Path, tmp_path: Path, straight: dict[int, float]) -> None:
    """A checkpoint in olmo_jax 0.1's layout (a model record holding compute_dtype, attention_impl='cudnn' and
    remat; the optimizer state of plain optax.adamw with a schedule, whose update count sits in a
    ScaleByScheduleState; no opt_state_layout in meta) resumes here, on a CPU, with the losses of an unbroken run."""
    import optax

    from olmo_jax.train.checkpoint import Checkpointer, load_params

    train(load_config(MICRO, _overrides(tokens, tmp_path / "new", "stop_at=6")))
    reader = Checkpointer(tmp_path / "new" / "checkpoints", read_only=True)
    config = load_config(MICRO, _overrides(tokens, tmp_path / "new"))
    from olmo_jax.parallel.mesh import make_mesh
    from olmo_jax.train.trainer import make_step

    abstract = make_step(config, make_mesh(config.mesh)).abstract_state
    params, opt_state, meta = reader.restore(6, abstract.params, abstract.opt_state)
    reader.close()
    clip, injected = opt_state
    adam, masked, _ = injected.inner_state
    legacy = (clip, (adam, masked, optax.ScaleByScheduleState(count=injected.count)))  # 0.1's optimizer state
    record = meta["model"] | {"compute_dtype": "bfloat16", "attention_impl": "cudnn", "remat": "full"}
    old = {k: v for k, v in meta.items() if k not in ("opt_state_layout", "run")} | {"model": record}
    writer = Checkpointer(tmp_path / "old" / "checkpoints", async_save=False)
    writer.save(6, params, old, legacy)
    writer.wait()
    writer.close()
    assert load_params(tmp_path / "old")[0] == config.model  # readers ignore the run options in the record
    train(load_config(MICRO, _overrides(tokens, tmp_path / "old")))
    assert _losses(tmp_path / "old") == {s: straight[s] for s in range(7, 13)}
