"""Fetching OLMo's preprocessed token files over HTTP(S): resumable, retried, size-checked, and put at the final name
only when whole.

A download writes `<dest>.part`, next to a sidecar `<dest>.part.json` that records the URL, length and validators
(ETag, Last-Modified) it was started against. A rerun continues the part file with `Range: bytes=<have>-` when the
remote file is unchanged and starts over when it changed, so two versions are never spliced. Only a part file whose
size equals the server's length is renamed (`os.replace`, atomic within a file system) to `<dest>`: a file at the
final name is always complete.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import random
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from olmo_jax.errors import DownloadError, UsageError

# OLMo's configs name these files r2://olmo-data/...; OLMo's README: replace `r2://olmo-data` with
# `https://olmo-data.org` for public HTTP access.
OLMO_MIX_V1_5 = "https://olmo-data.org/preprocessed/olmo-mix/v1_5/gpt-neox-20b-pii-special"
PRESETS: dict[str, tuple[str, ...]] = {
    # configs/1b.py data.paths: ~24 GB, ~12B uint16 tokens.
    "recipe": (f"{OLMO_MIX_V1_5}/part-001-00000.npy",),
    # The first four data.paths of OLMo's configs/official/OLMo-1B.yaml.
    "olmo-mix-v1_5-sample": tuple(
        f"{OLMO_MIX_V1_5}/part-{part}.npy" for part in ("000-00000", "000-00001", "001-00000", "002-00000")
    ),
}
USER_AGENT = "olmo_jax-download/0.1"
MAX_BACKOFF_S = 60.0


class _Retryable(Exception):
    """A transient failure (connection, timeout, 5xx, short body): worth another attempt from what was written."""


class _StatusError(DownloadError):
    """An HTTP error status that retrying will not fix (4xx)."""

    def __init__(self, message: str, code: int, headers: http.client.HTTPMessage) -> None:
        super().__init__(message)
        self.code = code
        self.headers = headers


@dataclasses.dataclass(frozen=True)
class Remote:
    """What the server says about a file: its length and the validators that change when its content does."""

    size: int
    etag: str | None
    last_modified: str | None


def preset_urls(name: str) -> tuple[str, ...]:
    """The URLs of a named preset (see PRESETS)."""
    if name not in PRESETS:
        raise DownloadError(f"Unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    return PRESETS[name]


def destination(url: str, output_dir: str | Path) -> Path:
    """Where `url` is saved inside `output_dir`: under the last component of its path."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path).rsplit("/", 1)[-1]
    if not name:
        raise DownloadError(f"{url} does not end in a file name; give a URL of a file.")
    return Path(output_dir) / name


def part_paths(dest: str | Path) -> tuple[Path, Path]:
    """The partial file and its sidecar for the download of `dest`."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")


def download(
    url: str,
    dest: str | Path,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` and return `dest`; a complete `dest` of the server's length is kept as is.

    retries: further attempts after a transient failure (connection error, timeout, HTTP 5xx/408/429, a body cut
      short); each resumes from the bytes already written, and an attempt that extends the file resets the count.
    timeout: seconds to wait for the connection and for each read.
    backoff: the first retry waits about this many seconds, doubling after each failure (with jitter, at most 60 s).
    progress: show a progress bar, and notes on retries and restarts, on stderr.
    """
    if retries < 0 or timeout <= 0 or chunk_size <= 0:
        raise UsageError(f"retries must be >= 0 and timeout, chunk_size > 0 (got {retries}, {timeout}, {chunk_size}).")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, _ = part_paths(dest)
    furthest = part.stat().st_size if part.exists() else 0
    failures = 0
    with tqdm(desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress) as bar:
        while True:
            try:
                return _attempt(url, dest, timeout, chunk_size, bar)
            except _Retryable as e:
                have = part.stat().st_size if part.exists() else 0
                if have > furthest:
                    furthest, failures = have, 0
                failures += 1
                if failures > retries:
                    raise DownloadError(
                        f"{url}: giving up after {retries} retries: {e}. Rerun later to resume from {part}."
                    ) from None
                delay = min(backoff * 2 ** (failures - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.5)
                _note(bar, f"{url}: {e}; retry {failures}/{retries} in {delay:.1f} s")
                time.sleep(delay)


def _attempt(url: str, dest: Path, timeout: float, chunk_size: int, bar: tqdm) -> Path:
    remote = probe(url, timeout)
    if dest.exists():
        size = dest.stat().st_size
        if size == remote.size:
            bar.reset(total=size)
            bar.update(size)
            _note(bar, f"{dest}: already complete ({size:,} bytes)")
            part_paths(dest)[1].unlink(missing_ok=True)  # left behind if a run died right after the rename
            return dest
        raise DownloadError(
            f"{dest} exists with {size:,} bytes but {url} has {remote.size:,}; move or delete it to download again."
        )
    part, sidecar = part_paths(dest)
    have = _resumable_bytes(url, remote, part, sidecar)
    bar.reset(total=remote.size)
    bar.update(have)
    if have < remote.size:
        have = _fetch(url, remote, part, have, timeout, chunk_size, bar)
    if have != remote.size:
        raise _Retryable(f"connection closed after {have:,} of {remote.size:,} bytes")
    with open(part, "rb") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    sidecar.unlink(missing_ok=True)
    return dest


def _note(bar: tqdm, message: str) -> None:
    if not bar.disable:
        bar.write(message, file=sys.stderr)


def _resumable_bytes(url: str, remote: Remote, part: Path, sidecar: Path) -> int:
    """Bytes of `part` that continue the same remote file; a stale or unknown part file is discarded."""
    expected = {"url": url, **dataclasses.asdict(remote)}
    if part.exists() and sidecar.exists():
        try:
            recorded = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            recorded = None
        have = part.stat().st_size
        if recorded == expected and have <= remote.size:
            return have
    part.unlink(missing_ok=True)
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(expected))
    os.replace(tmp, sidecar)
    return 0


def _fetch(url: str, remote: Remote, part: Path, have: int, timeout: float, chunk_size: int, bar: tqdm) -> int:
    """Append the rest of the file to `part` from byte `have`; return the new size of `part`."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = _open(url, "GET", headers, timeout)
    except _StatusError as e:
        if e.code != 416:
            raise
        total = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", "").strip())
        raise DownloadError(
            f"{url}: size mismatch: the server announced {remote.size:,} bytes but refuses a range from byte {have:,}"
            + (f" (its length is {int(total[1]):,})" if total else "") + f". Delete {part} to start over."
        ) from None
    with response:
        if response.status == 206:
            start, total = _content_range(url, response.headers.get("Content-Range"))
            if start != have or total != remote.size:
                part.unlink()
                raise _Retryable(f"server resumed at byte {start} of {total} instead of {have} of {remote.size}")
            mode = "ab"
        else:
            length = response.headers.get("Content-Length")
            if length is None or int(length) != remote.size:
                raise _Retryable(f"size mismatch: the server announced {remote.size:,} bytes, then sent a body of "
                                 f"{length} bytes")
            if have:
                _note(bar, f"{url}: server ignored the range request; restarting from byte 0")
            have, mode = 0, "wb"
            bar.reset(total=remote.size)
        with open(part, mode) as f:
            while have < remote.size:
                try:
                    chunk = response.read(min(chunk_size, remote.size - have))
                except (OSError, http.client.HTTPException) as e:
                    raise _Retryable(f"read failed after {have:,} of {remote.size:,} bytes ({e})") from None
                if not chunk:
                    break
                f.write(chunk)
                have += len(chunk)
                bar.update(len(chunk))
    return have


def probe(url: str, timeout: float = 60.0) -> Remote:
    """The length and validators of `url` from a HEAD request (a 1-byte GET when HEAD gives no length)."""
    try:
        with _open(url, "HEAD", {}, timeout) as response:
            length = response.headers.get("Content-Length")
            headers = response.headers
    except _StatusError as e:
        if e.code not in (405, 501):  # HEAD not allowed / not implemented
            raise
        length = None
    if length is None:
        with _open(url, "GET", {"Range": "bytes=0-0"}, timeout) as response:
            headers = response.headers
            if response.status == 206:
                _, total = _content_range(url, headers.get("Content-Range"))
                length = str(total)
            else:
                length = headers.get("Content-Length")
    if length is None or not length.isdigit():
        raise DownloadError(f"{url}: the server gives no length, so a download could not be checked for "
                            "completeness; fetch it another way.")
    return Remote(int(length), headers.get("ETag"), headers.get("Last-Modified"))


def _content_range(url: str, value: str | None) -> tuple[int, int]:
    """(first byte, total length) of a `Content-Range: bytes first-last/total` header."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", (value or "").strip())
    if match is None:
        raise DownloadError(f"{url}: the server answered a range request with Content-Range {value!r}, not a range "
                            "of a known length.")
    return int(match[1]), int(match[2])


def _open(url: str, method: str, headers: dict[str, str], timeout: float) -> http.client.HTTPResponse:
    """Send one request; transient failures become _Retryable, permanent ones DownloadError."""
    request = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT, **headers})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in (408, 429) or e.code >= 500:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from None
        hint = {
            401: "access denied; the URL may be private or mistyped",
            403: "access denied; the URL may be private or mistyped",
            404: "not found; check the URL or the preset",
        }.get(e.code, str(e.reason))
        raise _StatusError(f"{url}: HTTP {e.code}: {hint}.", e.code, e.headers) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, str) and "unknown url type" in e.reason:
            raise DownloadError(f"{url}: not an http(s) URL.") from None
        raise _Retryable(f"cannot reach the server ({e.reason})") from None
    except (OSError, http.client.HTTPException) as e:
        raise _Retryable(f"connection failed ({e})") from None
