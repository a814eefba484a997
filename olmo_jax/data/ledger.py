"""The batch ledger: a short content hash of every step's global batch, so two runs' data can be compared batch by
batch and a run's data proved (docs/data.md, "Provenance").

A run with `data.ledger` appends one JSON line per step to `<save_folder>/data_ledger.jsonl`:
`{"step": N, "tokens": "<16 hex>", "instances": "<16 hex>"}` for the batch of OLMo's global_step N (our batch
N − 1). `tokens` is BLAKE2b (8-byte digest) of the batch's token ids as little-endian uint32, rows in global order
(position 0 … G−1 of the step's slice of the epoch's order) and T ids per row; `instances` is BLAKE2b (8 bytes) of
the rows' global instance indices as little-endian uint64, in the same order. Both depend only on the data, the
seed and the global batch size: not on devices, processes or microbatches. `ledger` computes the same records from
a config without training, many steps per read.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax.data.order import Batches, row_positions
from olmo_jax.errors import DataError
from olmo_jax.jsonl import keep_through, records

LEDGER_FILE = "data_ledger.jsonl"


def _digest(data: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=8).hexdigest()


def global_rows(batches: Batches, step: int) -> np.ndarray:
    """The global instance indices of batch `step` (0-based) in global position order, [G] int64."""
    epoch, within = divmod(step, batches.batches_per_epoch)
    g = batches.global_batch_size
    return batches.epoch_order(epoch)[within * g:(within + 1) * g].astype(np.int64)


def _record(step: int, rows: np.ndarray, tokens: np.ndarray) -> dict[str, Any]:
    """The record of batch `step` from its rows' instance indices [G] and token ids [G, T], in global order."""
    return {"step": step + 1, "tokens": _digest(tokens.astype("<u4")), "instances": _digest(rows.astype("<u8"))}


def ledger(batches: Batches, start: int, stop: int, chunk: int = 64) -> Iterator[dict[str, Any]]:
    """The ledger records of batches start … stop − 1 (0-based; records name OLMo's global_step, batch + 1),
    reading `chunk` steps' rows at a time."""
    for first in range(start, stop, chunk):
        steps = range(first, min(stop, first + chunk))
        rows = np.stack([global_rows(batches, s) for s in steps])  # [steps, G]
        tokens = batches.files.read(rows)  # [steps, G, T]
        for i, s in enumerate(steps):
            yield _record(s, rows[i], tokens[i])


class LedgerWriter:
    """Appends a run's ledger records (process 0). Given the step a run starts from, it first drops what a killed
    predecessor recorded after it, so a resumed ledger has every step once, in order.

    `observe` (the prefetcher calls it in its thread with each batch it read) hashes the batch there, off the
    loop's path; in a one-process run that batch is the whole global batch, so nothing is read twice. With several
    processes, process 0 holds only its rows and reads the global batch once more for the record.
    """

    def __init__(self, run_dir: Path, batches: Batches, start_step: int) -> None:
        self.batches = batches
        self._ready: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._positions = row_positions(batches.global_batch_size, batches.grad_accum, batches.dp_world_size)
        path = Path(run_dir) / LEDGER_FILE
        keep_through(path, start_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (closed in close())

    def observe(self, step: int, batch: np.ndarray) -> None:
        """Hash batch `step` (this process's [A, R, T]) as the prefetcher read it."""
        if self.batches.process_count == 1:
            tokens = np.empty((self.batches.global_batch_size, batch.shape[-1]), batch.dtype)
            tokens[self._positions] = batch  # [A, R] positions → global order
            record = _record(step, global_rows(self.batches, step), tokens)
        else:
            record = next(ledger(self.batches, step, step + 1))
        with self._lock:
            self._ready[step] = record

    def write(self, step: int) -> None:
        """The record of the step just taken (`step` updates applied: batch step − 1)."""
        with self._lock:
            record = self._ready.pop(step - 1, None)
        if record is None:  # not seen by the prefetcher (a caller without one)
            record = next(ledger(self.batches, step - 1, step))
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def read_ledger(path: str | Path) -> dict[int, dict[str, Any]]:
    """A ledger file's records by step (a step recorded twice keeps the later record)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Ledger {path} does not exist.")
    return {r["step"]: r for r in records(path.read_text())}


def first_difference(a: dict[int, dict[str, Any]], b: dict[int, dict[str, Any]]) -> tuple[int | None, str]:
    """The first step both ledgers hold whose batches differ, and what differs ((None, summary) when none does)."""
    common = sorted(set(a) & set(b))
    for step in common:
        differs = [k for k in ("instances", "tokens") if a[step].get(k) != b[step].get(k)]
        if differs:
            return step, f"step {step}: {' and '.join(differs)} differ ({a[step]} vs {b[step]})"
    if not common:
        return None, "the ledgers share no step"
    return None, f"steps {common[0]}-{common[-1]} ({len(common)} in both) are identical"
