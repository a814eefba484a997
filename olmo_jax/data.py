"""Training data read exactly as OLMo reads it (olmo_spec.md §5): token files, global order, per-process rows,
and a prefetching iterator."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """OLMo's DataConfig fields for memmap token files, plus how we prefetch."""

    paths: tuple[str, ...] = ()  # token files, read in this order (OLMo: data.paths)
    memmap_dtype: str = "uint16"  # OLMo: data.memmap_dtype (uint32 for vocabularies above 65,536)
    seed: int | None = None  # OLMo: data.seed; None → the run's seed
    prefetch_depth: int = 8  # batches built ahead by the background thread


class DataError(ValueError):
    """Training data that cannot be used as configured, naming the file and the value."""


class TokenFiles:
    """Instances of `seq_len` tokens over OLMo token files, concatenated in the given order (§5.1).

    Each file is a headerless raw array (despite the `.npy` name), read with np.memmap; instances never span files and
    a file's leftover tokens are dropped. Global instance g lives in file f at local index g − offsets[f].
    """

    def __init__(self, paths: Sequence[str | Path], dtype: str, seq_len: int) -> None:
        if not paths:
            raise DataError("data.paths is empty: give at least one token file (e.g. --config.data.paths=FILE).")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise DataError(f"data.memmap_dtype={dtype!r} is not a numpy dtype; use 'uint16' or 'uint32'.") from None
        if self.dtype not in (np.uint16, np.uint32, np.uint64, np.int32):
            raise DataError(f"data.memmap_dtype={dtype!r} must be an integer type such as 'uint16' or 'uint32'.")
        self.paths = tuple(str(p) for p in paths)
        self.seq_len = seq_len
        sizes, counts = [], []
        for path in self.paths:
            if not os.path.isfile(path):
                raise DataError(f"Token file {path} does not exist.")
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
        self._memmaps: list[np.memmap | None] = [None] * len(self.paths)

    @property
    def num_instances(self) -> int:
        return int(self.offsets[-1])

    def locate(self, instance: int) -> tuple[int, int]:
        """Global instance index → (file index, token offset within that file)."""
        f = int(np.searchsorted(self.offsets, instance, side="right") - 1)
        return f, (instance - int(self.offsets[f])) * self.seq_len

    def _memmap(self, f: int) -> np.memmap:
        if self._memmaps[f] is None:
            self._memmaps[f] = np.memmap(self.paths[f], dtype=self.dtype, mode="r")
        return self._memmaps[f]

    def read(self, instances: np.ndarray) -> np.ndarray:
        """Global instance indices [...] → token ids [..., seq_len] as int32."""
        flat = np.asarray(instances, np.int64).reshape(-1)
        out = np.empty((flat.size, self.seq_len), np.int32)
        for row, instance in enumerate(flat):
            f, start = self.locate(int(instance))
            out[row] = self._memmap(f)[start:start + self.seq_len]
        return out.reshape(*np.shape(instances), self.seq_len)

    def fingerprint(self) -> dict[str, object]:
        """What identifies the data: paths, byte sizes, dtype and instance length."""
        return {"paths": list(self.paths), "sizes": list(self.sizes), "memmap_dtype": self.dtype.name,
                "seq_len": self.seq_len}
