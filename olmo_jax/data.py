"""Training data read exactly as OLMo reads it (olmo_spec.md §5): token files, global order, per-process rows,
and a prefetching iterator. Token files may be local or at http(s)://, gs:// and s3:// URLs (olmo_jax/remote.py).

Dimension letters: A gradient-accumulation (micro) steps, R rows of one micro-step (all devices, or this process's
share), T sequence length.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax.prefetch import Prefetcher
from olmo_jax.remote import RemoteError, RemoteOptions, RemoteStore, is_url


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """OLMo's DataConfig fields for memmap token files, plus how we prefetch and read remote files."""

    paths: tuple[str, ...] = ()  # token files or http(s)://, gs://, s3:// URLs, read in this order (OLMo: data.paths)
    memmap_dtype: str = "uint16"  # OLMo: data.memmap_dtype (uint32 for vocabularies above 65,536)
    seed: int | None = None  # OLMo: data.seed; None → the run's seed
    # Batches built ahead by the background thread. Remote files: depth × step time must cover the longest stall of
    # a read (latency plus retries' backoff); 8 × the 1B step (~2 s on one H200) rides out a 16 s stall.
    prefetch_depth: int = 8
    # Build data.paths[0] (and its sibling heldout.npy) from the Python standard library if missing (quickstart).
    stdlib_corpus: bool = False
    remote_retries: int = 8  # retries of a failed remote request (5xx, 408, 429, connection errors, timeouts)
    remote_backoff: float = 0.5  # seconds before the first retry, doubling (8 retries: up to ~2 min in all)
    remote_timeout: float = 60.0  # seconds a remote request may go unanswered before it is re-issued
    remote_concurrency: int = 64  # remote requests in flight at once (a 1B batch is 64 rows: one round trip)
    s3_endpoint: str | None = None  # an S3-compatible server for s3:// URLs (MinIO, R2, ...); None: AWS
    cache_dir: str | None = None  # keep every remote byte read on local disk here; None: no cache
    cache_chunk_mb: float = 1.0  # cache granularity: a cold row read fetches its whole chunk

    def __post_init__(self) -> None:
        if self.prefetch_depth < 1:
            raise DataError(f"data.prefetch_depth={self.prefetch_depth} must be at least 1.")
        for name in ("remote_retries", "remote_backoff"):
            if getattr(self, name) < 0:
                raise DataError(f"data.{name}={getattr(self, name)} must be ≥ 0.")
        if self.remote_concurrency < 1:
            raise DataError(f"data.remote_concurrency={self.remote_concurrency} must be at least 1.")
        for name in ("remote_timeout", "cache_chunk_mb"):
            if getattr(self, name) <= 0:
                raise DataError(f"data.{name}={getattr(self, name)} must be positive.")

    def remote_options(self) -> RemoteOptions:
        return RemoteOptions(
            retries=self.remote_retries, backoff=self.remote_backoff, timeout=self.remote_timeout,
            concurrency=self.remote_concurrency, s3_endpoint=self.s3_endpoint, cache_dir=self.cache_dir,
            cache_chunk_bytes=max(1, round(self.cache_chunk_mb * 2**20)),
        )


class DataError(ValueError):
    """Training data that cannot be used as configured, naming the file and the value."""


def _describe(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


class TokenFiles:
    """Instances of `seq_len` tokens over OLMo token files, concatenated in the given order (§5.1).

    Each file is a headerless raw array (despite the `.npy` name); instances never span files and a file's leftover
    tokens are dropped. Global instance g lives in file f at local index g − offsets[f]. Local files are read with
    np.memmap, at most `max_open_files` mapped at once (each mapping holds a file descriptor); a path that is a URL
    is read by byte ranges through `RemoteStore` with `remote` options, a batch's rows from all URLs at once.
    Reading is thread-safe.
    """

    def __init__(self, paths: Sequence[str | Path], dtype: str, seq_len: int, max_open_files: int = 128,
                 remote: RemoteOptions | None = None) -> None:
        if isinstance(paths, str | Path):
            paths = [paths]
        if not paths:
            raise DataError("data.paths is empty: give at least one token file (e.g. --config.data.paths=FILE).")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise DataError(f"data.memmap_dtype={dtype!r} is not a numpy dtype; use 'uint16' or 'uint32'.") from None
        if self.dtype not in (np.uint16, np.uint32, np.int32):
            raise DataError(f"data.memmap_dtype={dtype!r} must be an integer type such as 'uint16' or 'uint32'.")
        if seq_len <= 0:
            raise DataError(f"Instance length (model.max_sequence_length) {seq_len} must be positive.")
        self.paths = tuple(str(p) for p in paths)
        self.seq_len = seq_len
        self.is_remote = np.array([is_url(p) for p in self.paths])
        urls = sorted({p for p in self.paths if is_url(p)})
        self._store = RemoteStore(remote) if urls else None
        try:
            remote_sizes = dict(zip(urls, self._store.sizes(urls), strict=True)) if urls else {}
        except RemoteError as e:
            raise DataError(str(e)) from None
        sizes, counts = [], []
        for path in self.paths:
            if path in remote_sizes:
                size = remote_sizes[path]
            elif not os.path.isfile(path):
                raise DataError(f"Token file {path} does not exist (data.paths); check the path, or create it with "
                                "tools/prepare_data.py.")
            else:
                size = os.path.getsize(path)
            if size % self.dtype.itemsize:
                raise DataError(
                    f"Token file {path} has {size} bytes, not a multiple of {self.dtype.itemsize} "
                    f"(data.memmap_dtype={self.dtype.name}); is the dtype right, or is the file truncated?"
                )
            sizes.append(size)
            counts.append(size // (self.dtype.itemsize * seq_len))
        self.sizes = tuple(sizes)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._max_open = max(1, max_open_files)
        self._open: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def num_instances(self) -> int:
        return int(self.offsets[-1])

    def locate(self, instance: int) -> tuple[int, int]:
        """Global instance index → (file index, token offset within that file)."""
        if not 0 <= instance < self.num_instances:
            raise IndexError(f"Instance {instance} is outside [0, {self.num_instances}).")
        f = int(np.searchsorted(self.offsets, instance, side="right") - 1)
        return f, (instance - int(self.offsets[f])) * self.seq_len

    def _instances_of(self, f: int) -> np.ndarray:
        """File f as a read-only [instances, T] view; the least recently used mapping is closed past the limit."""
        with self._lock:
            view = self._open.get(f)
            if view is not None:
                self._open.move_to_end(f)
                return view
            n = int(self.offsets[f + 1] - self.offsets[f])
            view = np.memmap(self.paths[f], dtype=self.dtype, mode="r", shape=(n * self.seq_len,)).reshape(
                n, self.seq_len) if n else np.empty((0, self.seq_len), self.dtype)
            self._open[f] = view
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)  # readers holding it keep the mapping alive until they finish
            return view

    def read(self, instances: np.ndarray) -> np.ndarray:
        """Global instance indices [...] → token ids [..., T] as int32."""
        shape = np.shape(instances)
        flat = np.asarray(instances, np.int64).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_instances):
            raise IndexError(f"Instance indices must be in [0, {self.num_instances}); got {flat.min()}..{flat.max()}.")
        files = np.searchsorted(self.offsets, flat, side="right") - 1
        out = np.empty((flat.size, self.seq_len), np.int32)
        if flat.size and files[0] == files[-1] and (files == files[0]).all() and not self.is_remote[files[0]]:
            f = int(files[0])
            # One fancy-indexed gather from the mapping, then one widening copy (numpy releases the GIL for both).
            np.copyto(out, self._instances_of(f)[flat - self.offsets[f]], casting="unsafe")
        else:
            remote = self.is_remote[files]
            for f in np.unique(files[~remote]):
                rows = np.flatnonzero(files == f)
                out[rows] = self._instances_of(int(f))[flat[rows] - self.offsets[f]]
            if remote.any():
                rows = np.flatnonzero(remote)
                out[rows] = self._read_remote(files[rows], flat[rows])
        return out.reshape(*shape, self.seq_len)

    def _read_remote(self, files: np.ndarray, instances: np.ndarray) -> np.ndarray:
        """Rows of remote files as one request per row, all in flight together → [rows, T] of the file dtype."""
        row_bytes = self.seq_len * self.dtype.itemsize
        starts = (instances - self.offsets[files]) * row_bytes
        ranges = [(self.paths[f], int(s), int(s) + row_bytes) for f, s in zip(files, starts, strict=True)]
        try:
            data = self._store.read(ranges)
        except RemoteError as e:
            raise DataError(str(e)) from None
        return np.frombuffer(b"".join(data), self.dtype).reshape(len(ranges), self.seq_len)

    def fingerprint(self) -> dict[str, object]:
        """What identifies the data: paths (URLs for remote files), byte sizes, dtype and instance length."""
        return {"paths": list(self.paths), "sizes": list(self.sizes), "memmap_dtype": self.dtype.name,
                "seq_len": self.seq_len}


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


def batch_layout(global_batch_size: int, grad_accum: int, world_size: int) -> np.ndarray:
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

    Batches are laid out [A, R, T] as in `batch_layout`; with P processes each owning W/P of the W data-parallel
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
                f"Token files {_describe(files.paths)} hold {files.num_instances} instances of {files.seq_len} "
                f"tokens ({self.total_size} after drop_last to a multiple of dp_world_size={W}), fewer than one global "
                f"batch of {G}; add data or lower global_train_batch_size."
            )
        self.batches_per_epoch = self.total_size // G
        self._layout = batch_layout(G, A, W)
        cols = G // A // P
        self._columns = slice(process_index * cols, (process_index + 1) * cols)
        self._orders: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._order_lock = threading.Lock()

    def epoch_of(self, step: int) -> int:
        return step // self.batches_per_epoch

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
        """Global instance indices of batch `step`, [A, G // A] int64, laid out as in `batch_layout`."""
        if step < 0:
            raise ValueError(f"step={step} must be non-negative.")
        epoch, within = divmod(step, self.batches_per_epoch)
        order = self._epoch_order(epoch)
        return order[within * self.global_batch_size + self._layout].astype(np.int64)

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
                 transform: Callable[[np.ndarray], Any] | None = None) -> Prefetcher:
        """Batches start_step … stop_step − 1 built ahead by a background thread; see `Prefetcher`.

        transform, when given, runs in that thread on each batch (e.g. a host-to-device transfer).
        """
        make = self.batch_at if transform is None else lambda step: transform(self.batch_at(step))
        return Prefetcher(make, range(start_step, stop_step), depth)
