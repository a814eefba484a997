"""Losing a process of a multi-process run, with a stand-in for JAX's coordination service: PeerWatch names the lost
process and the last checkpoint, an error a lost peer caused is reported as the loss, other errors stay as they are.
(The real thing, two processes and a kill -9, is tests/test_parallel.py's.)"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import pytest
from conftest import ROOT

from olmo_jax.config import load_config
from olmo_jax.errors import ConfigError, TrainingError


class _Service:
    """A stand-in for JAX's distributed-runtime client: which processes are alive, and a barrier that fails."""

    def __init__(self, alive: list[int], barrier_fails: bool = True) -> None:
        self.alive, self.barrier_fails, self.barriers = alive, barrier_fails, []

    def get_live_nodes(self, everyone: list[int]) -> dict[int, int]:
        assert jax.process_index() in everyone  # JAX refuses a question about a set without the asker
        return {p: 0 for p in self.alive}

    def wait_at_barrier(self, name: str, timeout_ms: int) -> None:
        self.barriers.append(name)
        if self.barrier_fails:
            raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out")


def _watch(monkeypatch: pytest.MonkeyPatch, service: _Service, tmp_path: Path) -> tuple[object, list[str]]:
    from olmo_jax.parallel import distributed

    monkeypatch.setattr(distributed, "_client", lambda: service)
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
    (tmp_path / "8").mkdir()
    (tmp_path / "8.orbax-checkpoint-tmp-3").mkdir()  # an unfinished save is not "complete"
    said: list[str] = []
    return distributed.PeerWatch(tmp_path, settle_s=0.5, interval_s=0.05, on_loss=said.append), said


def test_peer_watch_names_the_lost_process_and_the_last_checkpoint(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    watch, said = _watch(monkeypatch, _Service(alive=[0, 1]), tmp_path)
    with watch:
        time.sleep(0.3)
        assert said == []  # everyone alive: nothing said
        watch._client.alive = [0]
        deadline = time.monotonic() + 10
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(said) == 1 and said[0].startswith("Lost process 1 of 2"), said
    assert f"The last complete checkpoint is step 8 in {tmp_path}." in said[0]


def test_an_error_with_a_lost_peer_is_reported_as_the_loss(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    watch, said = _watch(monkeypatch, _Service(alive=[0]), tmp_path)
    watch._interval = 60  # only the exit path speaks
    with pytest.raises(TrainingError), watch:
        raise TrainingError("Saving checkpoint step 12 failed: Gloo AllGather failed: Connection closed by peer")
    assert len(said) == 1 and "Lost process 1 of 2" in said[0] and "Gloo AllGather failed" in said[0], said


@pytest.mark.parametrize("service", [_Service(alive=[0, 1], barrier_fails=False),  # everyone failed together
                                     _Service(alive=[0, 1], barrier_fails=True)])  # this process failed alone
def test_an_error_without_a_lost_peer_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       service: _Service) -> None:
    watch, said = _watch(monkeypatch, service, tmp_path)
    watch._interval = 60
    with pytest.raises(TrainingError, match="disk full"), watch:
        raise TrainingError("disk full")
    assert said == [] and service.barriers == ["olmo_jax_failed"]


def test_heartbeat_timeouts_are_checked() -> None:
    with pytest.raises(ConfigError, match="heartbeat_timeout_seconds=1"):
        load_config(ROOT / "configs" / "tiny.py", ["distributed.heartbeat_timeout_seconds=1"])
