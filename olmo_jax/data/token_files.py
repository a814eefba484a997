"""OLMo token files (docs/olmo_facts.md §5.1): instances of `max_sequence_length` tokens over headerless raw arrays,
concatenated in the order of `data.paths`; local files through np.memmap, URLs by byte ranges (olmo_jax.data.remote).
"""

from __future__ import annotations

import collections
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from olmo_jax.data.config import RemoteOptions, is_url
from olmo_jax.errors import DataError

_DTYPE_PROBE_BYTES = 1 << 16  # the start of each file that the dtype check reads


def manifest_path(output: str | Path) -> Path:
    """Where tools/prepare_data.py writes the manifest of a token file: `<file>.json` (it records the dtype)."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def describe_paths(paths: Sequence[str]) -> str:
    """The first three paths, and how many more."""
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
        self._store = None
        if urls:
            from olmo_jax.data.remote import RemoteStore, kvstore_spec  # tensorstore only when a path is a URL

            for url in urls:
                kvstore_spec(url)  # an unusable URL is named first
            if remote is None:
                raise DataError(f"data.paths holds URLs ({describe_paths(urls)}) but no remote options were given: "
                                "pass remote=DataConfig.remote_options().")
            self._store = RemoteStore(remote)
        remote_sizes = dict(zip(urls, self._store.sizes(urls), strict=True)) if urls else {}
        sizes, counts = [], []
        for path in self.paths:
            if path in remote_sizes:
                size = remote_sizes[path]
            elif os.path.isdir(path):
                raise DataError(f"Token file {path} is a directory; give the token files in it, in order "
                                "(data.paths=('dir/a.npy', 'dir/b.npy'), or repeat --config.data.paths=FILE).")
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
        self._check_dtype()
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._max_open = max(1, max_open_files)
        self._open: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _check_dtype(self) -> None:
        """Refuse data that cannot be of `data.memmap_dtype`: a manifest of tools/prepare_data.py that records another
        dtype, or uint32 ids read as uint16 (then every second uint16 of the file's start is 0: the high halves of ids
        below 65,536), which would otherwise train to the end on half zeros."""
        for path in self.paths:
            manifest = manifest_path(path)
            if not is_url(path) and manifest.is_file():
                try:
                    recorded = json.loads(manifest.read_text()).get("dtype")
                except (OSError, ValueError, AttributeError):
                    recorded = None
                if recorded is not None and recorded != self.dtype.name:
                    raise DataError(f"Token file {path} holds {recorded} ids (its manifest {manifest} says so) but "
                                    f"data.memmap_dtype={self.dtype.name}: set --config.data.memmap_dtype={recorded}.")
        if self.dtype != np.uint16:
            return
        heads = {i: min(size, _DTYPE_PROBE_BYTES) // 2 * 2 for i, size in enumerate(self.sizes)}
        remote = [i for i in heads if self.is_remote[i] and heads[i]]
        data = dict(zip(remote, self._store.read([(self.paths[i], 0, heads[i]) for i in remote]), strict=True)) \
            if remote else {}
        for i, n in heads.items():
            if n < 256:  # too little to judge
                continue
            raw = data[i] if i in data else np.fromfile(self.paths[i], np.uint8, count=n).tobytes()
            values = np.frombuffer(raw, np.uint16)
            if not values[1::2].any() and values[0::2].any():
                raise DataError(
                    f"Token file {self.paths[i]} looks like uint32 ids read as uint16 (every second uint16 of its "
                    f"first {n:,} bytes is 0, the high half of an id below 65,536): set "
                    "--config.data.memmap_dtype=uint32, or check how the file was made.")

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
        data = self._store.read(ranges)  # a RemoteError is a DataError naming the URL and range
        return np.frombuffer(b"".join(data), self.dtype).reshape(len(ranges), self.seq_len)

    def fingerprint(self) -> dict[str, object]:
        """What identifies the data: paths (URLs for remote files), byte sizes, dtype and instance length."""
        return {"paths": list(self.paths), "sizes": list(self.sizes), "memmap_dtype": self.dtype.name,
                "seq_len": self.seq_len}
