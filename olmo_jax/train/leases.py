"""Readers' leases on checkpoint steps: a reader of a live run claims the step it reads, and the run's writer keeps
claimed steps beyond `save_num_checkpoints_to_keep` until the claim is released (olmo_jax/train/checkpoint.py).

A lease is an empty file `<checkpoints>/.readers/<step>.<host>.<pid>.<id>`, refreshed while the read goes on and
removed when it ends. One not refreshed for LEASE_S is a dead reader's: it holds nothing, and is removed once ten
times that old. A reader that cannot write there (a read-only mount) reads without a lease.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

LEASES = ".readers"  # <checkpoints>/.readers/<step>.<host>.<pid>.<id>: a reader's claim on a step
LEASE_S = 120.0  # a lease not refreshed for this long is a dead reader's: ignored, and removed after 10 times that


class KeepLeased:
    """Orbax preservation policy: keep the steps that readers hold leases on (`lease`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        held = leased_steps(self.directory)
        return [info.step in held for info in checkpoints]


def leased_steps(directory: Path) -> set[int]:
    """The steps under `directory` with a live reader's lease; a dead reader's old leases are removed."""
    held: set[int] = set()
    try:
        entries = list(os.scandir(directory / LEASES))
    except OSError:
        return held
    now = time.time()
    for entry in entries:
        step = entry.name.split(".")[0]
        try:
            age = now - entry.stat().st_mtime
        except OSError:  # released meanwhile
            continue
        if age < LEASE_S and step.isdigit():
            held.add(int(step))
        elif age > 10 * LEASE_S:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    return held


@contextlib.contextmanager
def lease(directory: Path, step: int) -> Iterator[bool]:
    """Hold a lease on `step` of the checkpoints in `directory` while the block reads it (refreshed in the
    background); yields whether it could be taken (not where the reader cannot write: then it reads unprotected)."""
    path = directory / LEASES / f"{step}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(exist_ok=True)
        path.touch(exist_ok=False)
    except OSError:
        yield False
        return
    done = threading.Event()

    def refresh() -> None:
        while not done.wait(LEASE_S / 4):
            with contextlib.suppress(OSError):
                os.utime(path)

    keeper = threading.Thread(target=refresh, name="olmo_jax-lease", daemon=True)
    keeper.start()
    try:
        yield True
    finally:
        done.set()
        keeper.join()
        with contextlib.suppress(OSError):
            path.unlink()
