"""Stopping a run cleanly: SIGTERM or Ctrl-C (one process), or JAX's preemption notice (several processes), asks
the loop to finish the current step, save a checkpoint and exit 0."""

from __future__ import annotations

import signal
import sys
from typing import Any

import jax
from jax.experimental import multihost_utils
from tqdm import tqdm


class StopRequest:
    """SIGTERM or Ctrl-C asks the loop to finish the current step, checkpoint and exit 0. A second Ctrl-C aborts.

    With several processes, SIGTERM (a scheduler's preemption notice) is caught by JAX's preemption service
    instead: it tells every process, and all of them stop and save at the same step. A Python SIGTERM handler
    would exclude that service, and a Ctrl-C seen by the processes at different steps would leave one saving while
    another waits in the next step's collectives; so there Ctrl-C keeps its default meaning: abort.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.multiprocess = jax.process_count() > 1
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in () if self.multiprocess else (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        tqdm.write(f"{self.requested} received: finishing this step, then checkpointing and exiting "
                   "(Ctrl-C again to abort without a checkpoint)", file=sys.stderr)

    def check(self, step: int) -> str | None:
        """Why to stop after `step`, or None. Every process must call this at every step (JAX's protocol)."""
        if self.multiprocess and multihost_utils.reached_preemption_sync_point(step):
            self.requested = "SIGTERM (preemption notice)"
        return self.requested

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
