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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax.data.order import Batches
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


def ledger(batches: Batches, start: int, stop: int, chunk: int = 64) -> Iterator[dict[str, Any]]:
    """The ledger records of batches start … stop − 1 (0-based; records name OLMo's global_step, batch + 1),
    reading `chunk` steps' rows at a time."""
    for first in range(start, stop, chunk):
        steps = range(first, min(stop, first + chunk))
        rows = np.stack([global_rows(batches, s) for s in steps])  # [steps, G]
        tokens = batches.files.read(rows).astype("<u4")  # [steps, G, T]
        for i, s in enumerate(steps):
            yield {"step": s + 1, "tokens": _digest(tokens[i]), "instances": _digest(rows[i].astype("<u8"))}


class LedgerWriter:
    """Appends a run's ledger records (process 0). Given the step a run starts from, it first drops what a killed
    predecessor recorded after it, so a resumed ledger has every step once, in order."""

    def __init__(self, run_dir: Path, batches: Batches, start_step: int) -> None:
        self.batches = batches
        path = Path(run_dir) / LEDGER_FILE
        keep_through(path, start_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (closed in close())

    def write(self, step: int) -> None:
        """The record of the step just taken (`step` updates applied: batch step − 1)."""
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
