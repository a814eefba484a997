"""Checkpoints: path forms, weights-only checkpoints, readers that never touch a live run's saves in flight."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_config

from olmo_jax.errors import CheckpointError, CheckpointVanishedError
from olmo_jax.model.transformer import init_params
from olmo_jax.train import checkpoint as checkpoint_module
from olmo_jax.train.checkpoint import (
    Checkpointer,
    load_params,
    open_step,
    read_newest,
    resolve,
    save_params,
)
from olmo_jax.train.leases import LEASE_S, LEASES, lease, leased_steps


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict]:
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    checkpointer = Checkpointer(tmp_path / "run" / "checkpoints", async_save=False)
    for step in (3, 7):
        checkpointer.save(step, params, {"model": config, "step": step})
    checkpointer.wait()
    checkpointer.close()
    return tmp_path / "run", params


def test_every_path_form_resolves(saved: tuple[Path, dict]) -> None:
    run, _ = saved
    assert resolve(run) == (run / "checkpoints", None)
    assert resolve(run / "checkpoints") == (run / "checkpoints", None)
    assert resolve(run / "checkpoints" / "3") == (run / "checkpoints", 3)
    for path, step in ((run, 7), (run / "checkpoints", 7), (run / "checkpoints" / "3", 3)):
        checkpointer, found = open_step(path)
        checkpointer.close()
        assert found == step
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(run / "nope")


def test_readers_leave_a_save_in_flight_alone(saved: tuple[Path, dict]) -> None:
    """A reader (load_params, open_step) never removes temporary step directories, which in a live run are saves in
    flight; the run's own writer removes its killed predecessor's when it opens (the control)."""
    run, params = saved
    in_flight = run / "checkpoints" / "9.orbax-checkpoint-tmp"  # a live run's unfinished save, as Orbax names it
    in_flight.mkdir()
    _, loaded, meta = load_params(run)
    reader, step = open_step(run)
    reader.close()
    assert meta["step"] == step == 7 and in_flight.exists()
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded), params)
    writer = Checkpointer(run / "checkpoints")  # removes them synchronously, before it returns
    assert not in_flight.exists()
    writer.close()


def test_a_reader_outrun_many_times_keeps_taking_the_newest_step(saved: tuple[Path, dict],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A run saving every step with keep 1 can rotate away the step a slow reader picked many times in a row (the
    converter's cold first read lost 5 races in a row): the reader keeps taking the newest step for READ_PATIENCE_S,
    then gives up with an error that says why."""
    run, params = saved
    config = tiny_config()
    writer = Checkpointer(run / "checkpoints", async_save=False)
    tried: list[int] = []
    newer = iter(range(101, 200))

    def outrun(times: int):
        def read(checkpointer: Checkpointer, step: int) -> int:
            tried.append(step)
            if len(tried) <= times:  # the run saves a newer step and rotates this one away while it is read
                new = next(newer)
                writer.save(new, params, {"model": config, "step": new})
                raise CheckpointVanishedError(f"step {step} vanished")
            return step
        return read

    assert read_newest(run, outrun(12)) == 112 and tried[:3] == [7, 101, 102]
    tried.clear()
    monkeypatch.setattr(checkpoint_module, "READ_PATIENCE_S", 0.0)
    with pytest.raises(CheckpointVanishedError, match=r"Steps \[112\] of .* \(1 in 0 s\) were each deleted while "
                                                      r"being read.*Read it again, or copy a step"):
        read_newest(run, outrun(1))
    tried.clear()
    with pytest.raises(CheckpointVanishedError, match="step 3 vanished"):  # a step the caller named is not swapped
        read_newest(run / "checkpoints" / "3", outrun(1))
    writer.close()


def test_a_leased_step_outlives_rotation_until_released(tmp_path: Path) -> None:
    """A keep-1 writer keeps the step a reader holds a lease on, and rotates it away at its first save after the
    release; a dead reader's lease (not refreshed for LEASE_S) holds nothing and is removed when 10 times that old."""
    import os
    import time

    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    root = tmp_path / "checkpoints"
    writer = Checkpointer(root, max_to_keep=1, async_save=False)

    def save(step: int) -> list[str]:
        writer.save(step, params, {"model": config, "step": step})
        return sorted(p.name for p in root.iterdir() if p.name.isdigit())

    save(1)
    with lease(root, 1) as held:
        assert held and leased_steps(root) == {1}
        assert save(2) == ["1", "2"] and save(3) == ["1", "3"]
    assert leased_steps(root) == set() and save(4) == ["4"]
    dead = root / LEASES / "4.otherhost.123.abcd1234"
    dead.touch()
    os.utime(dead, (time.time() - 2 * LEASE_S,) * 2)
    assert save(5) == ["5"] and dead.exists()
    os.utime(dead, (time.time() - 11 * LEASE_S,) * 2)
    assert leased_steps(root) == set() and not dead.exists()
    writer.close()


def test_weights_only_checkpoint_refuses_a_full_restore(tmp_path: Path) -> None:
    config = tiny_config()
    step_dir = save_params(tmp_path, config, init_params(config, jax.random.key(0)))
    assert step_dir == tmp_path.absolute() / "checkpoints" / "0"
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match="holds weights only"):
        checkpointer.restore(0, {}, {"something": 1})
    checkpointer.close()


def test_an_empty_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        load_params(tmp_path)


def test_checksum_bench_reports_what_it_measured() -> None:
    import json

    from conftest import run_python

    result = run_python("tools/bench_checksum.py", "--config=configs/tiny.py", "--gib", "0.001", "--repeats", "3",
                        "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 0 < report["timed_bytes"] < report["state_bytes"]  # 1 MiB of tiny's state: a part, scaled
    assert 0 < report["min_s"] <= report["median_s"] <= report["max_s"]
    scaled = report["state_bytes"] * report["median_s"] / report["timed_bytes"]
    assert report["whole_state_s"] == pytest.approx(scaled)


@pytest.mark.slow
def test_checksums_need_memory_for_one_array_at_a_time_not_the_whole_state() -> None:
    """The checksums of a state took twice the state's memory in temporaries (one jitted pass over every array at
    once: 3.2 GB more for 1.6 GB of arrays, so a 1B save or restore could run a device out of memory); per array,
    the temporaries of the largest array are the bound."""
    from conftest import run_python

    script = """
import resource, jax, jax.numpy as jnp
from olmo_jax.train.checksum import checksums
xs = [jnp.ones((2048, 8192), jnp.float32) + i for i in range(12)]
jax.block_until_ready(xs)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
checksums(xs)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""
    proc = run_python("-c", script, env={"JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    grew = int(proc.stdout.split()[-1])
    state = 12 * 2048 * 8192 * 4  # 805 MB
    assert grew < 0.5 * state, f"checksums took {grew / 1e6:.0f} MB more for {state / 1e6:.0f} MB of arrays"


def test_a_step_vanishing_mid_listing_is_listed_again(tmp_path: Path) -> None:
    """Orbax lists the step folders, then reads each one's metadata: a step being deleted in between raises
    FileNotFoundError, or NotADirectoryError while its folder is half removed (seen in CI); both are a new listing."""
    from olmo_jax.train.checkpoint import _scan

    def flaky(error: type[OSError], calls: list[int]):
        def listing() -> list[int]:
            calls.append(1)
            if len(calls) == 1:
                raise error("checkpoints/8")
            return [9]
        return listing

    for error in (FileNotFoundError, NotADirectoryError):
        calls: list[int] = []
        assert _scan(flaky(error, calls), tmp_path) == [9] and len(calls) == 2
