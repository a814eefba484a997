"""The `data` section of a run's config: OLMo's DataConfig fields for memmap token files, plus how we prefetch and
read remote files (and those remote-read options as the remote layer takes them). configs/1b.py gives every value
and says what it means."""

from __future__ import annotations

import dataclasses
import os
import re

from olmo_jax.errors import ConfigError

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(path: str | os.PathLike) -> bool:
    """Whether a data.paths entry is a URL (scheme://...) rather than a local path."""
    return bool(_URL.match(str(path)))


@dataclasses.dataclass(frozen=True)
class RemoteOptions:
    """How olmo_jax.data.remote reads files at URLs: DataConfig's data.remote_* and data.cache_* keys."""

    retries: int  # retries of a transient failure or an unanswered request (0: none)
    backoff: float  # seconds before the first retry, doubling after each (plus up to min(1 s, backoff) jitter)
    timeout: float  # seconds a request may go unanswered before it is cancelled and re-issued
    concurrency: int  # requests in flight at once (the 1B batch has 64 rows: one round trip per batch)
    s3_endpoint: str | None  # an S3-compatible server (MinIO, R2, ...) instead of AWS
    cache_dir: str | None  # ChunkCache directory; None: no cache
    cache_chunk_bytes: int


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """OLMo's `data.paths`, `data.memmap_dtype` and `data.seed`, then ours: prefetching, remote reads, the cache and
    the quickstart corpus (docs/data.md, docs/remote-data.md)."""

    paths: tuple[str, ...]  # token files or http(s)://, gs://, s3:// URLs, read in this order
    memmap_dtype: str  # uint16, or uint32 for vocabularies above 65,536
    seed: int | None  # None → the run's seed
    prefetch_depth: int  # batches built ahead by the background thread
    ledger: bool  # append each step's batch hashes to <save_folder>/data_ledger.jsonl (olmo_jax/data/ledger.py)
    stdlib_corpus: bool  # build paths[0] (and its sibling heldout.npy) from the standard library if missing
    remote_retries: int
    remote_backoff: float
    remote_timeout: float
    remote_concurrency: int
    s3_endpoint: str | None
    cache_dir: str | None
    cache_chunk_mb: float

    def __post_init__(self) -> None:
        if self.prefetch_depth < 1:
            raise ConfigError(f"data.prefetch_depth={self.prefetch_depth} must be at least 1.")
        for name in ("remote_retries", "remote_backoff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be ≥ 0.")
        if self.remote_concurrency < 1:
            raise ConfigError(f"data.remote_concurrency={self.remote_concurrency} must be at least 1.")
        for name in ("remote_timeout", "cache_chunk_mb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be positive.")

    def remote_options(self) -> RemoteOptions:
        return RemoteOptions(
            retries=self.remote_retries, backoff=self.remote_backoff, timeout=self.remote_timeout,
            concurrency=self.remote_concurrency, s3_endpoint=self.s3_endpoint, cache_dir=self.cache_dir,
            cache_chunk_bytes=max(1, round(self.cache_chunk_mb * 2**20)),
        )
