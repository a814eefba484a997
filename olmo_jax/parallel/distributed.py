"""Starting JAX's distributed runtime for multi-process (multi-host) runs, before any other JAX call.

One process per host (or per GPU) runs the same command. `jax.distributed.initialize` connects them through a
coordinator; afterwards `jax.devices()` lists every device of every process and jitted code runs SPMD over all of
them. Trap (docs/jax_notes.md §3): Slurm / Open MPI auto-detection gives each process ONE local GPU unless
`local_device_ids` is passed, so either launch one task per GPU or set `distributed.local_device_ids`.

Losing a process: the others would wait in their next collective until JAX's coordination service, after its
heartbeat timeout, aborts them (SIGABRT, a C++ stack trace, no word on what happened). Instead the service is started
recoverable, and `PeerWatch` asks it every few seconds which processes are alive: when one is lost (or the
coordinator itself), each survivor prints one `error:` line naming it and the last complete checkpoint and exits at
once, within `distributed.heartbeat_timeout_seconds` plus a poll of the loss; a rerun of every process resumes from
that checkpoint.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from olmo_jax.errors import DistributedError
from olmo_jax.parallel.config import DistributedConfig


def cluster_detected() -> str | None:
    """The launcher of a multi-task job step, if any ("slurm" or "openmpi").

    Slurm counts only inside an `srun` step of several tasks (what JAX's own detection reads): a plain `python ...`
    in an `sbatch` script of several tasks is one process and must not wait for the others.
    """
    slurm_step = {"SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID"} <= set(os.environ)
    if slurm_step and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "slurm"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    return None


def initialize(config: DistributedConfig) -> bool:
    """Call jax.distributed.initialize when `config` asks for it; returns whether the runtime is distributed."""
    wanted = config.enabled is True or (
        config.enabled is None and (config.coordinator_address is not None or cluster_detected() is not None)
    )
    if not wanted:
        return False
    # A lost process is reported by PeerWatch, not by the service aborting every survivor.
    jax.config.update("jax_enable_recoverability", True)
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            local_device_ids=list(config.local_device_ids) if config.local_device_ids is not None else None,
            heartbeat_timeout_seconds=config.heartbeat_timeout_seconds,
            shutdown_timeout_seconds=config.shutdown_timeout_seconds,
        )
    except (ValueError, RuntimeError) as e:
        raise DistributedError(
            f"Could not start JAX's distributed runtime ({type(e).__name__}: {e}). Set "
            "distributed.coordinator_address, num_processes and process_id, launch with srun / mpirun, or set "
            "distributed.enabled=False for a single process."
        ) from e
    return True


def _client() -> Any:
    """JAX's distributed-runtime client in a multi-process run, else None."""
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client if jax.process_count() > 1 else None


def _short(e: BaseException | str) -> str:
    return " ".join(str(e).split())[:200]


class PeerWatch:
    """Watches, in a multi-process run, for a process that is lost, and ends this one naming it.

    A daemon thread asks JAX's coordination service every `interval_s` seconds which processes are alive. When one
    is lost (or the service itself is unreachable: the coordinator, process 0, is gone) it calls `on_loss(message)`,
    which by default prints one `error:` line and ends this process at once with exit status 1: the main thread is
    then blocked in a collective that can never complete. Nothing a resume needs is lost (checkpoints are atomic).

    A collective can also fail at once instead of blocking (Gloo on CPU: "connection closed by peer"), surfacing as
    an unrelated error, e.g. of a checkpoint save. So when the watched block raises, the processes first meet at a
    barrier: all of them failing together is a real error, re-raised as it is; a barrier that fails within
    `settle_s` (the heartbeat timeout and a margin) while a process is lost means the loss is the cause, reported as
    above with the error it caused.
    """

    def __init__(self, checkpoints: Path, settle_s: float = 35.0, interval_s: float = 2.0,
                 on_loss: Callable[[str], None] | None = None) -> None:
        self._checkpoints = checkpoints
        self._settle = settle_s
        self._interval = interval_s
        self._on_loss = on_loss or _report_and_exit
        self._stop = threading.Event()
        self._client = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeerWatch:
        self._client = _client()
        if self._client is not None:
            self._thread = threading.Thread(target=self._watch, name="olmo_jax-peers", daemon=True)
            self._thread.start()
        return self

    def _lost(self) -> tuple[list[int], str]:
        """The processes the coordination service calls lost (all but this one, if it cannot be reached)."""
        everyone = list(range(jax.process_count()))
        try:
            return sorted(set(everyone) - set(self._client.get_live_nodes(everyone))), ""
        except Exception as e:  # the service cannot be reached at all: the coordinator is gone
            return [0], f" ({_short(e)})"

    def _report(self, lost: list[int], cause: str, then: str = "") -> None:
        names = ", ".join(f"process {p}" for p in lost)
        self._on_loss(f"Lost {names} of {jax.process_count()} (it stopped answering JAX's coordination service"
                      f"{cause}); process {jax.process_index()} stops too.{then} {last_checkpoint(self._checkpoints)} "
                      "Rerun the command on every process to resume.")

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            lost, cause = self._lost()
            if lost and not self._stop.is_set():
                self._report(lost, cause)
                return

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        self._stop.set()
        if self._client is None or error is None or not isinstance(error, Exception):
            return
        try:
            self._client.wait_at_barrier("olmo_jax_failed", int(self._settle * 1000))
            return  # every process failed: a real error, re-raised as it is
        except Exception:
            pass
        deadline = time.monotonic() + self._settle
        while True:
            lost, cause = self._lost()
            if lost:
                self._report(lost, cause, f" (Here the loss showed as: {type(error).__name__}: {_short(error)}.)")
                return
            if time.monotonic() > deadline:
                return  # nobody lost: this process failed alone; its error is re-raised
            time.sleep(0.5)


def finish(config: DistributedConfig, failed: bool = False) -> bool:
    """End a distributed run in order: every process waits for the others to finish, then the processes other than
    0 disconnect, and process 0, which hosts the coordination service, shuts it down only once they have left.

    A recoverable service (see the module docstring) no longer holds the processes at a shutdown barrier of its own,
    and a process still disconnecting when process 0 has gone is aborted by JAX with a C++ stack trace. Called on the
    way out of every run, errors included (`failed`: then the others get 10 s at most to arrive, as they failed
    together or not at all). When the others do not arrive within distributed.shutdown_timeout_seconds, this
    process leaves without them and returns False."""
    client = _client()
    if client is None:
        return True
    count, me = jax.process_count(), jax.process_index()
    wait_s = min(10, config.shutdown_timeout_seconds) if failed else config.shutdown_timeout_seconds
    try:
        client.wait_at_barrier("olmo_jax_finished", wait_s * 1000)
        if me == 0:  # (a process may ask only about a set that includes itself)
            everyone = list(range(count))
            deadline = time.monotonic() + config.shutdown_timeout_seconds
            while set(client.get_live_nodes(everyone)) - {0} and time.monotonic() < deadline:
                time.sleep(0.05)
    except Exception as e:  # the others never arrived (or the service is gone): leave without them
        if not failed:
            print(f"warning: process {me} of {count} leaves without the others ({_short(e)})", file=sys.stderr,
                  flush=True)
        return False
    jax.distributed.shutdown()
    return True


def last_checkpoint(directory: Path) -> str:
    """The newest complete checkpoint step in `directory`, read from the folder names alone (no Orbax call: this runs
    beside a main thread that may hold its locks)."""
    try:
        steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())
    except OSError:
        steps = []
    if not steps:
        return f"There is no complete checkpoint in {directory}."
    return f"The last complete checkpoint is step {steps[-1]} in {directory}."


def _report_and_exit(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
