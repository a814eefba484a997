"""OLMo's global order of training instances and the batch of each step (docs/olmo_facts.md §5.3): the seeded
shuffle of an epoch, how a global batch splits into microbatches and devices, and which rows each process reads.

Dimension letters: A gradient-accumulation (micro) steps, R rows of one micro-step (all devices, or this process's
share), T sequence length.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax.data.prefetch import Prefetcher
from olmo_jax.data.token_files import TokenFiles, describe_paths
from olmo_jax.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class BatchSplit:
    """How a global batch of G rows is split: G = microbatch × grad_accum × data-parallel devices."""

    global_batch: int
    microbatch: int  # rows per device per micro-step (OLMo: device_train_microbatch_size)
    dp_size: int  # devices the batch is split over
    grad_accum: int

    @classmethod
    def of(cls, global_batch: int, microbatch: int, dp_size: int) -> BatchSplit:
        g, m = global_batch, microbatch
        if g % (m * dp_size):
            raise ConfigError(
                f"global_train_batch_size={g} must equal device_train_microbatch_size={m} × gradient accumulation × "
                f"data-parallel size={dp_size} (devices), so it must be a multiple of {m * dp_size}. Change the "
                "global batch or the microbatch, or run on a different number of devices."
            )
        return cls(g, m, dp_size, g // (m * dp_size))

    @property
    def batch_shape(self) -> tuple[int, int]:
        """[A, M·devices] of the int32 [A, M·devices, T] global batch."""
        return self.grad_accum, self.microbatch * self.dp_size


def global_indices(num_instances: int, seed: int, epoch: int, world_size: int) -> np.ndarray:
    """OLMo's global order of one epoch (§5.3): a PCG64(seed + epoch) shuffle of arange(N) as uint32, truncated to
    a multiple of the world size (drop_last). Same generator and dtype as OLMo's IterableDataset, so the same
    permutation."""
    if num_instances >= 2**32:
        raise DataError(f"{num_instances} instances do not fit OLMo's uint32 global indices.")
    if world_size < 1:
        raise DataError(f"world_size={world_size} must be at least 1.")
    indices = np.arange(num_instances, dtype=np.uint32)
    np.random.Generator(np.random.PCG64(seed=seed + epoch)).shuffle(indices)
    return indices[: num_instances // world_size * world_size]


def write_global_indices(path: str | Path, indices: np.ndarray) -> Path:
    """OLMo's `<save_folder>/train_data/global_indices.npy`: one epoch's global order as raw uint32, no .npy header
    (OLMo's IterableDataset writes it with np.memmap, and its scripts/inspect_train_data.py reads it back so).
    Written to a temporary file and renamed, so a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    np.asarray(indices, dtype=np.uint32).tofile(tmp)
    os.replace(tmp, path)
    return path


def row_positions(global_batch_size: int, grad_accum: int, world_size: int) -> np.ndarray:
    """Position within the global batch of each [micro-step k, column j] → [A, G // A] int64.

    Column j belongs to device r = j // m (m = G // (W·A) rows per device per micro-step) as its row i = j % m.
    OLMo deals global positions to ranks strided (rank r gets r, r + W, ...) and splits each rank's device batch into
    consecutive micro-batches (§5.3), so [k, j] holds position r + W·(k·m + i). For W = 1 this is 0, 1, 2, ...
    """
    m = global_batch_size // (world_size * grad_accum)
    j = np.arange(world_size * m)
    k = np.arange(grad_accum)[:, None]
    return (j // m + world_size * (k * m + j % m)).astype(np.int64)


class Batches:
    """The global batch of each step as a pure function of (files, seed, step).

    `step` is 0-based: batch `step` feeds the (step+1)-th optimizer update (OLMo's global_step step+1) and holds
    positions [step·G, (step+1)·G) of its epoch's global order, epoch = step // batches_per_epoch, shuffled with
    seed + epoch; rows left over at an epoch's end are dropped (OLMo's DataLoader drop_last). Resuming needs only
    the step.

    Batches are laid out [A, R, T] as in `row_positions`; with P processes each owning W/P of the W data-parallel
    devices, process p holds columns [p·R/P, (p+1)·R/P) of every micro-step, so concatenating the processes' local
    batches along axis 1 gives the one-process batch (what jax.make_array_from_process_local_data expects).
    """

    def __init__(self, files: TokenFiles, seed: int, global_batch_size: int, grad_accum: int,
                 dp_world_size: int = 1, process_index: int = 0, process_count: int = 1,
                 vocab_size: int | None = None) -> None:
        G, A, W, P = global_batch_size, grad_accum, dp_world_size, process_count
        if min(G, A, W, P) < 1:
            raise DataError(f"global_batch_size={G}, grad_accum={A}, dp_world_size={W} and process_count={P} "
                            "must all be positive.")
        if G % (W * A):
            raise DataError(f"global_batch_size={G} is not divisible by dp_world_size × grad_accum = {W} × {A}; "
                            "each device needs the same whole number of rows per micro-step.")
        if W % P:
            raise DataError(f"dp_world_size={W} is not divisible by process_count={P}; every process must own the "
                            "same number of data-parallel devices.")
        if not 0 <= process_index < P:
            raise DataError(f"process_index={process_index} is outside [0, process_count={P}).")
        self.files = files
        self.seed = seed
        self.global_batch_size = G
        self.grad_accum = A
        self.dp_world_size = W
        self.process_index = process_index
        self.process_count = process_count
        self.vocab_size = vocab_size
        self.total_size = files.num_instances // W * W  # drop_last (§5.3)
        if self.total_size < G:
            raise DataError(
                f"Token files {describe_paths(files.paths)} hold {files.num_instances} instances of {files.seq_len} "
                f"tokens ({self.total_size} after drop_last to a multiple of dp_world_size={W}), fewer than one global "
                f"batch of {G}; add data or lower global_train_batch_size."
            )
        self.batches_per_epoch = self.total_size // G
        self._positions = row_positions(G, A, W)
        cols = G // A // P
        self._columns = slice(process_index * cols, (process_index + 1) * cols)
        self._orders: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._order_lock = threading.Lock()

    def epoch_of(self, step: int) -> int:
        return step // self.batches_per_epoch

    def set_epoch_order(self, epoch: int, order: np.ndarray) -> None:
        """Use `order` (an existing OLMo global_indices.npy) as `epoch`'s global order instead of computing it."""
        expected = len(self._epoch_order(epoch))
        if len(order) != expected:
            raise DataError(f"A global order of {len(order):,} instances does not fit this data's {expected:,}.")
        with self._order_lock:
            self._orders[epoch] = np.asarray(order, np.uint32)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """OLMo's global order of `epoch` (uint32, truncated to a multiple of dp_world_size)."""
        return self._epoch_order(epoch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        # Two epochs cached: near a boundary the prefetch thread is in the next epoch while the loop is in this one.
        with self._order_lock:
            order = self._orders.get(epoch)
            if order is None:
                order = global_indices(self.files.num_instances, self.seed, epoch, self.dp_world_size)
                self._orders[epoch] = order
                if len(self._orders) > 2:
                    self._orders.popitem(last=False)
            return order

    def instance_ids(self, step: int) -> np.ndarray:
        """Global instance indices of batch `step`, [A, G // A] int64, laid out as in `row_positions`."""
        if step < 0:
            raise DataError(f"step={step} must be non-negative.")
        epoch, within = divmod(step, self.batches_per_epoch)
        order = self._epoch_order(epoch)
        return order[within * self.global_batch_size + self._positions].astype(np.int64)

    def local_instance_ids(self, step: int) -> np.ndarray:
        """This process's columns of `instance_ids(step)`: [A, G // A // process_count] int64."""
        return self.instance_ids(step)[:, self._columns]

    def batch_at(self, step: int) -> np.ndarray:
        """This process's token ids of batch `step`: int32 [A, R, T] with R = G // A // process_count, validated."""
        ids = self.local_instance_ids(step)
        batch = self.files.read(ids)
        if self.vocab_size is not None:
            self._check_ids(batch, ids, step)
        return batch

    def _check_ids(self, batch: np.ndarray, ids: np.ndarray, step: int) -> None:
        # One pass: through a uint32 view a negative int32 (a uint32 file value ≥ 2^31) is also ≥ vocab_size.
        unsigned = batch.view(np.uint32)
        if unsigned.max() < self.vocab_size:
            return
        k, row, col = (int(x[0]) for x in np.nonzero(unsigned >= self.vocab_size))
        instance = int(ids[k, row])
        f, offset = self.files.locate(instance)
        raise DataError(
            f"Token id {int(unsigned[k, row, col])} at token {offset + col} of {self.files.paths[f]} (instance "
            f"{instance}, batch {step}) is ≥ vocab_size={self.vocab_size}; check data.memmap_dtype "
            f"({self.files.dtype.name}) and that the files were made with this model's tokenizer."
        )

    def prefetch(self, start_step: int, stop_step: int, depth: int = 8,
                 transform: Callable[[np.ndarray], Any] | None = None,
                 observe: Callable[[int, np.ndarray], None] | None = None) -> Prefetcher:
        """Batches start_step … stop_step − 1 built ahead by a background thread; see `Prefetcher`.

        In that thread, `observe(step, batch)` sees each batch as read (the batch ledger hashes it there), then
        `transform`, when given, turns it into what the loop gets (e.g. a host-to-device transfer).
        """

        def make(step: int) -> Any:
            batch = self.batch_at(step)
            if observe is not None:
                observe(step, batch)
            return batch if transform is None else transform(batch)

        return Prefetcher(make, range(start_step, stop_step), depth)
