"""A background thread that builds batches ahead of the training loop into a bounded queue."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from olmo_jax.errors import ConfigError


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()
_POLL_S = 0.1  # how often a blocked put/get rechecks for shutdown; bounds the latency of close() and Ctrl-C
# How long close() waits for a batch being built. A remote read stalled on a dead connection may take retries ×
# data.remote_timeout; a SIGTERM'd run must not wait for it (its checkpoint is already saved).
_JOIN_S = 5.0


class Prefetcher:
    """Iterator of (step, batch) built by a daemon thread into a bounded queue, in step order.

    An exception raised while building a batch is re-raised in the consuming thread by the `next()` that would have
    returned that batch. `close()` (also on leaving a `with` block) stops the thread even when it is blocked on a
    full queue, and joins it (a thread still building a batch after a few seconds, e.g. in a stalled remote read, is
    left to finish on its own and deliver nothing); being a daemon, a forgotten one never holds up interpreter exit.
    """

    def __init__(self, make: Callable[[int], Any], steps: range, depth: int) -> None:
        if depth < 1:
            raise ConfigError(f"prefetch depth={depth} must be at least 1 (data.prefetch_depth).")
        self._make = make
        self._steps = steps
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, name="olmo_jax-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for step in self._steps:
                if self._stop.is_set():
                    return
                if not self._put((step, self._make(step))):
                    return
        except BaseException as e:  # delivered to the consumer, which decides what it means
            self._put(_Failure(e))
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self

    def __next__(self) -> tuple[int, Any]:
        while not self._finished:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._finished = True
                    if not self._stop.is_set():
                        raise RuntimeError("The prefetch thread ended without delivering its batches.") from None
                continue
            if item is _DONE:
                self._finished = True
            elif isinstance(item, _Failure):
                self._finished = True
                self.close()
                raise item.error
            else:
                return item
        raise StopIteration

    def close(self) -> None:
        """Stop the thread and wait for it: at most one batch's build time, and at most _JOIN_S seconds."""
        self._stop.set()
        self._finished = True
        while True:  # free a slot so a put in progress returns at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=_JOIN_S)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
