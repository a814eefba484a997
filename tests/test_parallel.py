"""Data parallel + FSDP on simulated CPU devices: every mesh gives the 1-device losses, parameters are really
sharded, checkpoints move between meshes, and 2 processes × 2 devices reproduce one process (jax.distributed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, olmo_1b, write_patterned_tokens
from jax.sharding import PartitionSpec as P

from olmo_jax.config import load_config
from olmo_jax.errors import ConfigError
from olmo_jax.parallel.config import MeshConfig
from olmo_jax.parallel.mesh import spec_for
from olmo_jax.train.metrics import read_metrics
from olmo_jax.train.trainer import train

pytestmark = pytest.mark.slow

MICRO = ROOT / "tests" / "configs" / "micro.py"
# 8 rows per step, one per device per micro-step on 8 devices; 8 micro-steps on one device.
BATCH = ["global_train_batch_size=8", "device_train_microbatch_size=1"]


def _env(devices: int) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
                         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_patterned_tokens(tmp_path_factory.mktemp("data") / "tokens.npy", 1000)


def _losses(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_metrics(run_dir / "metrics.jsonl")]


@pytest.fixture(scope="module")
def one_device(tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    run_dir = tmp_path_factory.mktemp("one")
    train(load_config(MICRO, [f"data.paths={tokens}", f"save_folder={run_dir}", "stop_at=9", *BATCH]))
    return _losses(run_dir)


def test_spec_splits_the_largest_divisible_dimension() -> None:
    assert spec_for((50304, 2048), 8) == P("fsdp", None)
    assert spec_for((2048, 8192), 16) == P(None, "fsdp")
    assert spec_for((2048, 8192), 1) == P()
    assert spec_for((4,), 8) == P()  # small: replicated
    assert spec_for((1001, 1003), 8) == P()  # indivisible: replicated


def test_mesh_shape_rules() -> None:
    assert MeshConfig(data=-1, fsdp=1).shape(8) == (8, 1)
    assert MeshConfig(data=-1, fsdp=4).shape(8) == (2, 4)
    assert MeshConfig(data=2, fsdp=-1).shape(8) == (2, 4)
    with pytest.raises(ConfigError, match=r"mesh.data=3 × mesh.fsdp=1 does not fit the 8 devices"):
        MeshConfig(data=3, fsdp=1).shape(8)


def test_every_mesh_gives_the_one_device_losses(tokens: Path, tmp_path: Path, one_device: list[float]) -> None:
    meshes = {"dp8": (8, 1), "fsdp8": (1, 8), "dp2_fsdp4": (2, 4)}
    groups = []
    for name, (data, fsdp) in meshes.items():
        groups += ["--", f"save_folder={tmp_path / name}", f"mesh.data={data}", f"mesh.fsdp={fsdp}", "stop_at=6",
                   *BATCH]
    result = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "tests/multidevice.py", str(result), str(tokens), *groups[1:]],
                          cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(result.read_text())
    for name, run in zip(meshes, runs, strict=True):
        assert run["devices"] == 8
        np.testing.assert_allclose(_losses(tmp_path / name), one_device[:6], rtol=1e-5, err_msg=name)
    dp8, fsdp8, mixed = runs
    assert dp8["param_bytes_per_device"] == dp8["param_bytes"]  # pure data parallel: replicated
    assert fsdp8["param_bytes_per_device"] == fsdp8["param_bytes"] / 8  # every array split 8 ways
    assert mixed["param_bytes_per_device"] == mixed["param_bytes"] / 4


def test_checkpoint_moves_between_meshes(tokens: Path, tmp_path: Path, one_device: list[float]) -> None:
    run_dir = tmp_path / "run"
    common = [f"save_folder={run_dir}", *BATCH]
    result = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "tests/multidevice.py", str(result), str(tokens), *common, "mesh.data=1",
                           "mesh.fsdp=8", "stop_at=3"], cwd=ROOT, env=_env(8), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(load_config(MICRO, [f"data.paths={tokens}", *common, "stop_at=6"]))  # (1, 8) → 1 device
    proc = subprocess.run([sys.executable, "tests/multidevice.py", str(result), str(tokens), *common, "mesh.data=8",
                           "mesh.fsdp=1", "stop_at=9"], cwd=ROOT, env=_env(8), capture_output=True, text=True,
                          timeout=600)  # 1 device → (8, 1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_allclose(_losses(run_dir), one_device, rtol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tokens: Path, run_dir: Path, *overrides: str) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for i in range(2):
        args = [sys.executable, "-m", "olmo_jax.train", f"--config={MICRO}", f"--config.data.paths={tokens}",
                f"--config.save_folder={run_dir}", *(f"--config.{o}" for o in (*BATCH, *overrides)),
                f"--config.distributed.coordinator_address=localhost:{port}", "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}"]
        procs.append(subprocess.Popen(args, cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, out, err))
    return results


def test_two_processes_reproduce_one_process(tokens: Path, tmp_path: Path, one_device: list[float]) -> None:
    results = _finish(_two_processes(tokens, tmp_path, "stop_at=6"))
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert "4 × cpu in 2 process(es)" in results[0][1]
    np.testing.assert_allclose(_losses(tmp_path), one_device[:6], rtol=1e-5)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 6]


def test_sigterm_to_one_process_makes_both_save_the_same_step(tokens: Path, tmp_path: Path) -> None:
    long = ("max_duration=2000", "save_interval=1000")  # still running when the signal comes
    procs = _two_processes(tokens, tmp_path, *long)
    deadline = time.monotonic() + 300
    while len(_safe_losses(tmp_path)) < 2:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "runs ended early"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # only process 1 is told; JAX's preemption service tells process 0
    results = _finish(procs)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir()]
    assert len(saved) == 1 and saved[0] < 2000, saved
    assert "Stopped by SIGTERM" in results[0][1]
    results = _finish(_two_processes(tokens, tmp_path, *long, f"stop_at={saved[0] + 2}"))
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert f"resumed from {tmp_path / 'checkpoints' / str(saved[0])}" in results[0][1]
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["step"] == saved[0] + 2


def test_a_lost_process_ends_the_other_naming_it_and_the_checkpoint(tokens: Path, tmp_path: Path) -> None:
    long = ("max_duration=2000", "save_interval=4", "distributed.heartbeat_timeout_seconds=5")
    procs = _two_processes(tokens, tmp_path, *long)
    deadline = time.monotonic() + 300
    while not (tmp_path / "checkpoints" / "8").is_dir():
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "runs ended early"
        time.sleep(0.05)
    procs[1].kill()  # kill -9: no signal handler, no goodbye to the coordination service
    killed = time.monotonic()
    code, _, err = _finish(procs[:1])[0]
    waited = time.monotonic() - killed
    assert code == 1, err[-3000:]
    procs[1].wait()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Lost process 1 of 2" in errors[0], err[-3000:]
    kept = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert f"The last complete checkpoint is step {kept} in {tmp_path / 'checkpoints'}" in errors[0]
    assert waited < 60, waited  # heartbeat timeout 5 s + PeerWatch's poll, with room for a loaded machine
    # Both rerun: resumed from that checkpoint.
    results = _finish(_two_processes(tokens, tmp_path, *long, f"stop_at={kept + 2}"))
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert f"resumed from {tmp_path / 'checkpoints' / str(kept)}" in results[0][1]


def _safe_losses(run_dir: Path) -> list[float]:
    try:
        return _losses(run_dir)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return []


def test_memory_table_uses_the_real_shardings() -> None:
    import jax

    sys.path.insert(0, str(ROOT / "tools"))
    from memory_table import per_device_bytes

    from olmo_jax.model.transformer import param_shapes

    shapes = param_shapes(olmo_1b())
    total = sum(x.size * 4 for x in jax.tree.leaves(shapes))
    assert total == 1_176_764_416 * 4
    assert per_device_bytes(shapes, 1) == total
    assert per_device_bytes(shapes, 8) == total / 8  # every 1B matrix divides by 8
    assert per_device_bytes(shapes, 16) == total / 16
