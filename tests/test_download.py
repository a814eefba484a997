"""olmo_jax/download.py and tools/download_data.py against a local HTTP server that can misbehave on purpose."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import ROOT, run_python

from olmo_jax.data.download import PRESETS, destination, download, part_paths, preset_urls
from olmo_jax.errors import DownloadError

SIZE = 3 * 2**20 + 12_345  # not a multiple of any chunk size


class FileServer(ThreadingHTTPServer):
    """Serves `data` at every path, with HEAD and single byte ranges; the fields below inject faults."""

    daemon_threads = True

    def __init__(self, data: bytes) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.set_data(data)
        self.requests: list[tuple[str, str | None]] = []  # (method, Range header)
        self.status: int | None = None  # answer every request with this error status
        self.fail_next = 0  # answer this many requests with 500
        self.drop_after: int | None = None  # the next GET closes the connection after this many body bytes
        self.ignore_range = False  # answer range requests with 200 and the whole file
        self.range_from_zero = False  # answer range requests with 206 and the whole file
        self.extra_length = 0  # announce this many more bytes than the file has
        self.head_extra_length = 0  # ... only in answers to HEAD
        self.delay = 0.0  # seconds between 64 KiB pieces of a body

    def set_data(self, data: bytes) -> None:
        self.data = data
        self.etag = f'"{hashlib.sha1(data).hexdigest()}"'

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/preprocessed/part-001-00000.npy"


class Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self.respond(body=False)

    def do_GET(self) -> None:
        self.respond(body=True)

    def respond(self, body: bool) -> None:
        s = self.server
        s.requests.append((self.command, self.headers.get("Range")))
        if s.status is not None or s.fail_next:
            code = s.status or 500
            s.fail_next = max(0, s.fail_next - 1)
            self.send_error(code)
            return
        data, total = s.data, len(s.data) + s.extra_length + (s.head_extra_length if self.command == "HEAD" else 0)
        start = 0
        ranged = self.headers.get("Range") if not s.ignore_range else None
        if ranged:
            start = 0 if s.range_from_zero else int(ranged.removeprefix("bytes=").split("-")[0])
            if start >= len(data):  # a server announcing extra bytes refuses to serve them
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(total - start))
        self.send_header("ETag", s.etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return
        end = len(data)
        if s.drop_after is not None:
            end, s.drop_after = min(end, start + s.drop_after), None
        try:
            for i in range(start, end, 2**16):
                self.wfile.write(data[i:min(i + 2**16, end)])
                if s.delay:
                    time.sleep(s.delay)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (killed on purpose)


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer(os.urandom(SIZE))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def fetch(server: FileServer, dest: Path, **kwargs: object) -> Path:
    return download(server.url, dest, **({"backoff": 0.01, "chunk_size": 2**16, "progress": False} | kwargs))


def gets(server: FileServer) -> list[str | None]:
    return [rng for method, rng in server.requests if method == "GET"]


def test_full_download_is_byte_identical_and_a_rerun_skips_it(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "file.npy"
    assert fetch(server, dest) == dest
    assert dest.read_bytes() == server.data
    assert not any(p.exists() for p in part_paths(dest))
    assert gets(server) == [None]
    server.requests.clear()
    part_paths(dest)[1].write_text("{}")  # as left by a run killed right after the rename
    fetch(server, dest)
    assert server.requests == [("HEAD", None)]
    assert dest.read_bytes() == server.data and not part_paths(dest)[1].exists()


def test_a_dropped_connection_resumes_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "file.npy"
    server.drop_after = 1_000_000
    fetch(server, dest)
    assert dest.read_bytes() == server.data
    assert gets(server) == [None, "bytes=1000000-"]


def test_an_interrupted_download_keeps_a_part_file_that_a_rerun_completes(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "file.npy"
    part, _ = part_paths(dest)
    server.drop_after = 700_000
    with pytest.raises(DownloadError, match=rf"{server.url}: giving up after 0 retries: connection closed after "
                                            rf"700,000 of {SIZE:,} bytes"):
        fetch(server, dest, retries=0)
    assert not dest.exists() and part.stat().st_size == 700_000
    fetch(server, dest)
    assert dest.read_bytes() == server.data
    assert gets(server)[-1] == "bytes=700000-"


def test_killed_cli_resumes_and_never_leaves_a_partial_file_at_the_final_name(
    server: FileServer, tmp_path: Path
) -> None:
    dest = destination(server.url, tmp_path)
    part, _ = part_paths(dest)
    server.delay = 0.05  # ~2.5 s for the whole file: killed long before the end
    args = [sys.executable, "tools/download_data.py", server.url, "--output-dir", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size >= 2**18):
            assert proc.poll() is None, proc.communicate()
            assert not dest.exists()
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert not dest.exists()
    have = part.stat().st_size
    assert 0 < have < SIZE
    server.delay = 0.0
    result = run_python("tools/download_data.py", server.url, "--output-dir", str(tmp_path), "--quiet", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{dest} ({SIZE:,} bytes)"
    assert dest.read_bytes() == server.data
    assert gets(server)[-1] == f"bytes={have}-"
    assert not any(p.exists() for p in part_paths(dest))


def test_retries_recover_from_server_errors(server: FileServer, tmp_path: Path) -> None:
    server.fail_next = 3
    fetch(server, tmp_path / "file.npy", retries=3)
    assert (tmp_path / "file.npy").read_bytes() == server.data
    assert server.requests[:4] == [("HEAD", None)] * 4 and gets(server) == [None]


def test_persistent_server_errors_give_up_with_the_url(server: FileServer, tmp_path: Path) -> None:
    server.status = 503
    with pytest.raises(DownloadError, match=rf"{server.url}: giving up after 2 retries: HTTP 503"):
        fetch(server, tmp_path / "file.npy", retries=2)
    assert len(server.requests) == 3


@pytest.mark.parametrize(("status", "message"), [(404, "not found"), (403, "access denied")])
def test_client_errors_are_clear_and_not_retried(server: FileServer, tmp_path: Path, status: int,
                                                 message: str) -> None:
    server.status = status
    with pytest.raises(DownloadError, match=rf"{server.url}: HTTP {status}: {message}"):
        fetch(server, tmp_path / "file.npy")
    assert len(server.requests) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_a_missing_file_in_one_line(server: FileServer, tmp_path: Path) -> None:
    server.status = 404
    result = run_python("tools/download_data.py", server.url, "--output-dir", str(tmp_path), "--quiet", timeout=60)
    assert result.returncode == 1
    assert result.stderr == f"error: {server.url}: HTTP 404: not found; check the URL or the preset.\n"


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.npy"
    with pytest.raises(DownloadError, match=rf"{url}: giving up after 1 retries: cannot reach the server"):
        download(url, tmp_path / "x.npy", retries=1, backoff=0.01, progress=False)


def test_a_server_ignoring_ranges_restarts_cleanly(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "file.npy"
    server.drop_after, server.ignore_range = 1_500_000, True
    fetch(server, dest)
    assert dest.read_bytes() == server.data
    assert gets(server) == [None, "bytes=1500000-"]  # asked to resume, got the whole file, wrote it from byte 0


def test_a_range_answered_from_another_byte_restarts_rather_than_splicing(server: FileServer,
                                                                          tmp_path: Path) -> None:
    dest = tmp_path / "file.npy"
    server.drop_after, server.range_from_zero = 1_000_000, True
    fetch(server, dest)
    assert dest.read_bytes() == server.data
    assert gets(server) == [None, "bytes=1000000-", None]


def test_a_changed_remote_file_restarts_rather_than_splicing(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "file.npy"
    server.drop_after = 1_000_000
    with pytest.raises(DownloadError):
        fetch(server, dest, retries=0)
    server.set_data(os.urandom(SIZE))  # same length, new content and ETag
    fetch(server, dest)
    assert dest.read_bytes() == server.data
    assert gets(server)[-1] is None


def test_a_server_announcing_more_bytes_than_it_has_never_produces_the_file(
    server: FileServer, tmp_path: Path
) -> None:
    dest = tmp_path / "file.npy"
    server.extra_length = 1000
    message = (rf"{server.url}: size mismatch: the server announced {SIZE + 1000:,} bytes but refuses a range from "
               rf"byte {SIZE:,} \(its length is {SIZE:,}\)")
    with pytest.raises(DownloadError, match=message):
        fetch(server, dest, retries=2)
    assert not dest.exists()
    assert gets(server) == [None, f"bytes={SIZE}-"]


def test_a_body_length_other_than_announced_is_a_size_mismatch(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "file.npy"
    server.head_extra_length = 10
    with pytest.raises(DownloadError, match=rf"giving up after 1 retries: size mismatch: the server announced "
                                            rf"{SIZE + 10:,} bytes, then sent a body of {SIZE} bytes"):
        fetch(server, dest, retries=1)
    assert not dest.exists() and not part_paths(dest)[0].exists()


def test_an_existing_file_of_another_size_is_left_alone(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "file.npy"
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError, match=rf"{dest} exists with 3 bytes but {server.url} has {SIZE:,}; move or "
                                            "delete it"):
        fetch(server, dest)
    assert dest.read_bytes() == b"old"


def test_presets_and_destinations() -> None:
    assert preset_urls("recipe") == (
        "https://olmo-data.org/preprocessed/olmo-mix/v1_5/gpt-neox-20b-pii-special/part-001-00000.npy",
    )
    assert destination(PRESETS["recipe"][0], "data/dolma") == Path("data/dolma/part-001-00000.npy")
    assert all(url.startswith("https://olmo-data.org/") for urls in PRESETS.values() for url in urls)
    with pytest.raises(DownloadError, match="Unknown preset 'nope'; known presets: recipe"):
        preset_urls("nope")
    with pytest.raises(DownloadError, match="does not end in a file name"):
        destination("https://example.org/dir/", ".")
