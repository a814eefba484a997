"""Byte ranges of files at http(s)://, gs:// and s3:// URLs, read through tensorstore's key-value stores.

A remote token file is never downloaded whole. Its size comes from the store: an HTTP HEAD for http(s)://; for gs://
and s3://, whose object sizes tensorstore's Python API does not expose, a search with one-byte reads (a read past the
end is OUT_OF_RANGE). A batch then reads only its rows' byte ranges, all issued at once. Transient failures (HTTP 5xx,
408, 429, connection errors) and requests unanswered within the timeout are retried with exponential backoff and
jitter. tensorstore retries too, but its schedule has no per-request timeout (a stalled connection would wait for
ever), so it is set to its minimum, one immediate retry, and this module's loop does the rest. `ChunkCache`
optionally keeps every byte read on local disk.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import random
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tensorstore as ts

from olmo_jax.data.config import RemoteOptions
from olmo_jax.errors import RemoteError

SCHEMES = ("http", "https", "gs", "s3")
_STATUS = re.compile(r"^([A-Z_]+): ")
_RETRIED = re.compile(r"^ABORTED: All \d+ retry attempts failed: ")
_PROBE_FANOUT = 15  # one-byte reads per round of the size search: 16× narrower per round, 12 rounds for 2^48 bytes
_MAX_SIZE = 1 << 48

Range = tuple[str, int, int]  # (url, first byte, end byte exclusive)


def kvstore_spec(url: str, s3_endpoint: str | None = None) -> dict[str, Any]:
    """A token file's URL → the JSON spec of a tensorstore key-value store whose path is that file.

    http(s)://host/p → {"driver": "http", "base_url": "http(s)://host", "path": "/p"} (a query string stays in
    base_url); gs://bucket/p → {"driver": "gcs", "bucket", "path"}; s3://bucket/p → {"driver": "s3", "bucket", "path"}
    plus "endpoint" when s3_endpoint is given. The parsing is tensorstore's own.
    """
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise RemoteError(f"{url}: unsupported URL scheme {scheme}:// in data.paths; use http(s)://, gs:// or s3:// "
                          "URLs, or local paths.")
    try:
        spec = ts.KvStore.Spec(url).to_json()
    except ValueError as e:
        raise RemoteError(f"{url} is not a valid {scheme}:// URL: {e}") from None
    if not spec.get("path") or spec["path"].endswith("/"):
        raise RemoteError(f"{url} names a bucket or a directory, not a token file; give each file's URL in data.paths.")
    if spec["driver"] == "s3" and s3_endpoint:
        spec["endpoint"] = s3_endpoint
    return spec


def _context(options: RemoteOptions) -> ts.Context:
    """One context for all files, so the concurrency limit is shared; tensorstore's retries at their minimum."""
    immediate_retry = {"max_retries": 1, "initial_delay": "0s", "max_delay": "0s"}
    limit = {"limit": options.concurrency}
    spec: dict[str, Any] = {}
    for driver in ("http", "gcs", "s3"):
        spec[f"{driver}_request_retries"] = immediate_retry
        spec[f"{driver}_request_concurrency"] = limit
    return ts.Context(spec)


def _is_transient(error: ValueError) -> bool:
    """What is worth retrying: tensorstore's own retry gave up ('ABORTED: All 1 retry attempts failed: ...'), or the
    store is unavailable or slow."""
    return bool(_RETRIED.match(str(error))) or _status(error) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def _status(error: BaseException) -> str:
    """The absl status code tensorstore puts before the message ('ABORTED', 'OUT_OF_RANGE', ...)."""
    match = _STATUS.match(str(error))
    return match.group(1) if match else ""


def _credentials_message(url: str, cause: str) -> str:
    return (f"Credentials expired or missing for {url}: {cause}. For gs:// set GOOGLE_APPLICATION_CREDENTIALS or run "
            "`gcloud auth application-default login`; for s3:// set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
            "AWS_SESSION_TOKEN) or AWS_PROFILE; a signed http(s) URL may have expired.")


class RemoteStore:
    """Sizes and byte ranges of remote files; thread-safe. Reads go through `ChunkCache` when options.cache_dir is set.

    `size(url)` must have been called for a URL before `read` when a cache is used (the cache's chunks depend on it).
    """

    def __init__(self, options: RemoteOptions) -> None:
        self.options = options
        self._context = _context(self.options)
        self._stores: dict[str, ts.KvStore] = {}
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.cache = (ChunkCache(Path(self.options.cache_dir), self.options.cache_chunk_bytes)
                      if self.options.cache_dir else None)

    def _store(self, url: str) -> ts.KvStore:
        with self._lock:
            store = self._stores.get(url)
        if store is None:
            spec = kvstore_spec(url, self.options.s3_endpoint)
            try:
                store = ts.KvStore.open(spec, context=self._context).result(timeout=self.options.timeout)
            except (ValueError, TimeoutError) as e:
                raise RemoteError(f"Cannot open {url}: {e}") from None
            with self._lock:
                self._stores[url] = store
        return store

    def sizes(self, urls: Sequence[str]) -> list[int]:
        """Byte sizes of many files, asked concurrently."""
        if not urls:
            return []
        with concurrent.futures.ThreadPoolExecutor(min(32, len(urls)), thread_name_prefix="olmo_jax-size") as pool:
            return list(pool.map(self.size, urls))

    def size(self, url: str) -> int:
        """Byte size of one file, from an HTTP HEAD or, where that gives none (gs://, s3://, a server refusing HEAD),
        from a search with one-byte reads."""
        kvstore_spec(url, self.options.s3_endpoint)  # an unusable URL fails here, before any request
        size = self._head(url) if url.lower().startswith(("http://", "https://")) else None
        if size is None:
            size = self._probe(url)
        with self._lock:
            self._sizes[url] = size
        return size

    def _head(self, url: str) -> int | None:
        """Content-Length from a HEAD request, retried like reads; None when the server will not say."""
        request = urllib.request.Request(url, method="HEAD")
        attempts = self.options.retries + 1
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(request, timeout=self.options.timeout) as response:
                    length = response.headers.get("Content-Length")
                    ranges = response.headers.get("Accept-Ranges", "").lower()
                if ranges != "bytes":  # not advertised (optional in HTTP): ask for one byte to be sure
                    self._check_ranges(url)
                return int(length) if length is not None else None
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    raise RemoteError(f"{url} was not found (HTTP 404); check the URL in data.paths.") from None
                if e.code in (401, 403, 405, 501):
                    return None  # e.g. a URL signed for GET only; the ranged reads of the size search will tell
                if e.code < 500 and e.code not in (408, 429):
                    raise RemoteError(f"HEAD {url} failed: HTTP {e.code} {e.reason}.") from None
                cause = f"HTTP {e.code} {e.reason}"
            except (urllib.error.URLError, OSError) as e:  # refused, reset, unknown host, timed out
                cause = f"cannot reach the server: {getattr(e, 'reason', e)}"
            if attempt + 1 < attempts:
                time.sleep(self._backoff(attempt))
        raise RemoteError(f"Cannot get the size of {url}: {attempts} attempts failed, the last with {cause}. Check the "
                          "URL, the host and the network, or raise data.remote_retries.")

    def _check_ranges(self, url: str) -> None:
        """A server that ignores Range would send the whole file for every row: refuse it."""
        request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
        with urllib.request.urlopen(request, timeout=self.options.timeout) as response:
            status = response.status  # closing without reading the body drops the connection, not the file
        if status != 206:
            raise RemoteError(f"{url} does not answer byte-range requests (HTTP {status} to `Range: bytes=0-0`), so "
                              "every row would download the whole file; download it and give the local path, or "
                              "serve it with a server that supports ranges.")

    def _backoff(self, attempt: int) -> float:
        """Delay before retry `attempt` + 1: doubling from options.backoff, plus up to min(1 s, backoff) of jitter
        (tensorstore's schedule), so that many readers do not retry in step."""
        return self.options.backoff * 2**attempt + random.uniform(0, min(1.0, self.options.backoff))

    def _probe(self, url: str) -> int:
        """The size as the first offset whose one-byte read is OUT_OF_RANGE, narrowed 16× per round of reads."""
        lo, hi = 0, _MAX_SIZE  # byte lo - 1 exists (or lo = 0); byte hi does not
        while lo < hi:
            points = sorted({lo + (hi - lo) * j // (_PROBE_FANOUT + 1) for j in range(1, _PROBE_FANOUT + 1)})
            found = self._read_ranges([(url, p, p + 1) for p in points], probe=True)
            for point, value in zip(points, found, strict=True):
                if value is None:
                    hi = min(hi, point)
                else:
                    lo = max(lo, point + 1)
        return lo

    def read(self, ranges: Sequence[Range]) -> list[bytes]:
        """The bytes of each (url, start, stop), all requested at once (through the cache when there is one)."""
        if self.cache is None:
            return self._read_ranges(ranges)
        return self.cache.read(ranges, self._size_of, self._read_ranges)

    def _size_of(self, url: str) -> int:
        with self._lock:
            size = self._sizes.get(url)
        return self.size(url) if size is None else size

    def _read_ranges(self, ranges: Sequence[Range], probe: bool = False) -> list[Any]:
        """Issue every read at once and wait for all; re-issue those that failed transiently or went unanswered for
        options.timeout seconds, after a backoff, at most options.retries times. Other failures are final.

        probe: one-byte reads of the size search; a read past the end gives None, and errors speak of the size.
        """
        results: list[Any] = [None] * len(ranges)
        pending = list(range(len(ranges)))
        cause = ""
        for attempt in range(self.options.retries + 1):
            if attempt:
                time.sleep(self._backoff(attempt - 1))
            futures = [(i, self._store(ranges[i][0]).read(b"", byte_range=slice(ranges[i][1], ranges[i][2])))
                       for i in pending]
            deadline = time.monotonic() + self.options.timeout
            failed = []
            try:
                for i, future in futures:
                    try:
                        result = future.result(timeout=max(0.0, deadline - time.monotonic()))
                    except TimeoutError:
                        future.cancel()
                        failed.append(i)
                        cause = f"no answer within data.remote_timeout={self.options.timeout} s"
                        continue
                    except ValueError as e:
                        if probe and _status(e) == "OUT_OF_RANGE":
                            continue
                        if not _is_transient(e):
                            raise self._error(ranges[i], e, probe) from None
                        failed.append(i)
                        cause = _RETRIED.sub("", str(e))
                        continue
                    results[i] = self._value(ranges[i], result)
            except BaseException:
                for _, future in futures:
                    future.cancel()
                raise
            if not failed:
                return results
            pending = failed
        retries = f"{self.options.retries} {'retry' if self.options.retries == 1 else 'retries'}"
        raise RemoteError(f"{_doing(ranges[pending[0]], probe)} failed after {retries}: {cause}. Check the store, or "
                          "raise data.remote_retries.")

    @staticmethod
    def _value(where: Range, result: ts.KvStore.ReadResult) -> bytes:
        url, start, stop = where
        if result.state == "missing":
            raise RemoteError(f"{url} was not found (HTTP 404 or no such object); check the URL in data.paths.")
        value = bytes(result.value)
        if len(value) != stop - start:
            raise RemoteError(f"{url} returned {len(value)} bytes for bytes [{start}, {stop}).")
        return value

    def _error(self, where: Range, error: ValueError, probe: bool) -> RemoteError:
        url, start, stop = where
        status, message = _status(error), str(error)
        if status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            return RemoteError(_credentials_message(url, message))
        if status == "OUT_OF_RANGE":
            return RemoteError(f"Bytes [{start}, {stop}) lie beyond the end of {url}; has the file changed since the "
                               f"run started? ({message})")
        return RemoteError(f"{_doing(where, probe)} failed: {message}")


class ChunkCache:
    """Remote bytes kept on local disk in chunks of `chunk_bytes`, so a later epoch or a restarted run reads locally.

    Chunk c of a file holds its bytes [c·C, min((c+1)·C, size)), in `<directory>/<key>/<c>.chunk` where key hashes
    the URL, size and C (a file whose size changes gets fresh chunks; `source.json` there names the URL). A chunk is
    written to a temporary name, fsynced and renamed, and served only when its size is right: a partial chunk (a
    killed writer's temporary, a truncated file) is fetched again, never served. Cold, a row costs one chunk
    download: the 1B batch's 64 rows fetch 64 MiB at the default 1 MiB. Several processes may share the directory.
    """

    def __init__(self, directory: Path, chunk_bytes: int) -> None:
        self.directory = directory
        self.chunk_bytes = chunk_bytes
        self._ready: set[Path] = set()

    def folder(self, url: str, size: int) -> Path:
        key = hashlib.sha256(f"{url}\n{size}\n{self.chunk_bytes}".encode()).hexdigest()[:32]
        folder = self.directory / key
        if folder not in self._ready:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                if not (folder / "source.json").exists():
                    self._write(folder / "source.json", json.dumps(
                        {"url": url, "size": size, "chunk_bytes": self.chunk_bytes}).encode())
            except OSError as e:
                raise RemoteError(f"Cannot use data.cache_dir={self.directory}: {e}") from None
            self._ready.add(folder)
        return folder

    def chunk_path(self, url: str, size: int, chunk: int) -> Path:
        return self.folder(url, size) / f"{chunk:08d}.chunk"

    def _length(self, size: int, chunk: int) -> int:
        return min(self.chunk_bytes, size - chunk * self.chunk_bytes)

    def read(self, ranges: Sequence[Range], size_of: Callable[[str], int],
             fetch: Callable[[Sequence[Range]], list[bytes]]) -> list[bytes]:
        """The bytes of each range: cached chunks from disk; the missing ones fetched at once, stored, then used."""
        C = self.chunk_bytes
        pieces = []  # per range: (chunk path, first byte within it, end byte within it)
        wanted: dict[Path, Range] = {}
        for url, start, stop in ranges:
            size = size_of(url)
            parts = []
            for chunk in range(start // C, (stop - 1) // C + 1):
                path = self.chunk_path(url, size, chunk)
                parts.append((path, max(start, chunk * C) - chunk * C, min(stop, (chunk + 1) * C) - chunk * C))
                wanted[path] = (url, chunk * C, chunk * C + self._length(size, chunk))
            pieces.append(parts)
        missing = [path for path, (_, start, stop) in wanted.items() if not _has_size(path, stop - start)]
        fresh = dict(zip(missing, fetch([wanted[path] for path in missing]), strict=True))
        for path, data in fresh.items():
            self._write(path, data)
        out = []
        for parts in pieces:
            out.append(b"".join(fresh[path][a:b] if path in fresh else _read_part(path, a, b) for path, a, b in parts))
        return out

    def _write(self, path: Path, data: bytes) -> None:
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.tmp-", dir=path.parent)  # unique even across hosts
            with open(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise RemoteError(f"Cannot write the data cache (data.cache_dir={self.directory}): {e}") from None


def _doing(where: Range, probe: bool) -> str:
    url, start, stop = where
    return f"Finding the size of {url} (one-byte reads)" if probe else f"Reading bytes [{start}, {stop}) of {url}"


def _has_size(path: Path, length: int) -> bool:
    try:
        return path.stat().st_size == length
    except FileNotFoundError:
        return False


def _read_part(path: Path, start: int, stop: int) -> bytes:
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), stop - start, start)
    if len(data) != stop - start:
        raise RemoteError(f"Cache chunk {path} is shorter than it was when checked; delete it to fetch it again.")
    return data


__all__ = ["SCHEMES", "ChunkCache", "RemoteStore", "kvstore_spec"]
