"""Serve a directory over HTTP with byte ranges: try remote data.paths locally, and test and benchmark them.

    python tools/range_server.py DIR [--port 8000] [--latency-ms 100]

Answers HEAD and GET for the files under DIR, GET with `Range: bytes=a-b`, `a-` or `-n` as 206 Partial Content
(416 past the end), on 127.0.0.1 only. The same files also answer as a fake object store: GCS's JSON API
(/storage/v1/b/BUCKET/o/OBJECT?alt=media, for gs://BUCKET/OBJECT through tensorstore with
TENSORSTORE_GCS_HTTP_URL=<server> and GOOGLE_AUTH_TOKEN_FOR_TESTING=any) and S3 path-style URLs (/BUCKET/KEY, for
s3://BUCKET/KEY with data.s3_endpoint=<server>), BUCKET being a subdirectory. --latency-ms delays every answer. In
Python, `RangeServer` also injects failures (`fail`) and records the requests it saw (`requests`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from types import TracebackType

from olmo_jax import cli

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_GCS = "/storage/v1/b/"


@dataclasses.dataclass
class Fault:
    """Once `after` matching requests have passed, the next `times` (None: all) wait `delay` seconds, then answer
    `status` (None: answer normally). A request matches when it is for `name` and by `method` (None: any)."""

    status: int | None
    name: str | None = None
    method: str | None = None
    times: int | None = None
    after: int = 0
    delay: float = 0.0


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 drops clients' simultaneous connects (1 s SYN retries)

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up on a slow answer is normal
            super().handle_error(request, client_address)


class RangeServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 (port 0: a free one); `with RangeServer(dir) as server: server.url`."""

    def __init__(self, root: str | Path, latency: float = 0.0, port: int = 0) -> None:
        self.root = Path(root).resolve()
        self.latency = latency
        self.requests: list[tuple[str, str, str | None]] = []  # (method, file name, Range header)
        self.faults: list[Fault] = []
        self.stopped = False
        self.ranges = True  # False: ignore Range headers and advertise none, as `python -m http.server` does
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _handler(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, status: int | None, name: str | None = None, method: str | None = None, times: int | None = None,
             after: int = 0, delay: float = 0.0) -> None:
        with self._lock:
            self.faults.append(Fault(status, name, method, times, after, delay))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def gets(self, name: str | None = None) -> int:
        """GET requests seen so far (for one file name, or all)."""
        with self._lock:
            return sum(1 for method, n, _ in self.requests if method == "GET" and name in (None, n))

    def _fault_for(self, method: str, name: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.name not in (None, name) or fault.method not in (None, method):
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    continue
                if fault.times is None or fault.times > 0:
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
            return None

    def start(self) -> RangeServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="range-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: connections still open are closed on their next request."""
        self.stopped = True
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RangeServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.stopped:
            self.stop()


def _handler(server: RangeServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as object stores do
        disable_nagle_algorithm = True  # headers and body go out in two writes: without this, a 40 ms delayed-ACK stall

        def log_message(self, format: str, *args: object) -> None:  # quiet: tests and benchmarks read the log
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _name(self) -> str:
            path = urllib.parse.urlsplit(self.path).path
            if path.startswith(_GCS):  # /storage/v1/b/<bucket>/o/<object, percent-encoded>
                bucket, _, obj = path.removeprefix(_GCS).partition("/o/")
                return f"{bucket}/{urllib.parse.unquote(obj)}"
            return urllib.parse.unquote(path).lstrip("/")

        def _status(self, code: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _answer(self, body: bool) -> None:
            if server.stopped:
                self.close_connection = True
                return
            name = self._name()
            with server._lock:
                server.requests.append((self.command, name, self.headers.get("Range")))
            if server.latency:
                time.sleep(server.latency)
            fault = server._fault_for(self.command, name)
            if fault is not None:
                time.sleep(fault.delay)
                if fault.status is not None:
                    return self._status(fault.status)
            path = (server.root / name).resolve()
            if not path.is_relative_to(server.root) or not path.is_file():
                return self._status(404)
            stat = path.stat()
            size, stamp = stat.st_size, stat.st_mtime_ns
            headers = {"ETag": f'"{size}-{stamp}"', "x-goog-generation": str(stamp),
                       "Content-Type": "application/octet-stream"}
            if server.ranges:
                headers["Accept-Ranges"] = "bytes"
            start, stop, code = 0, size, 200
            match = _RANGE.fullmatch(self.headers.get("Range", "")) if server.ranges else None
            if match:
                first, last = match.groups()
                start, stop = (size - int(last), size) if not first else (int(first), int(last) + 1 if last else size)
                start, stop = max(0, start), min(stop, size)
                if start >= size or start >= stop:
                    return self._status(416, {"Content-Range": f"bytes */{size}"})
                code = 206
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(stop - start))
            self.end_headers()
            if body:
                with open(path, "rb") as f:
                    self.wfile.write(os.pread(f.fileno(), stop - start, start))

    return Handler


def run(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python tools/range_server.py", description=__doc__)
    parser.add_argument("root", help="directory to serve")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added to every request")
    args, _ = parser.parse_with_overrides(argv)
    if not Path(args.root).is_dir():
        parser.error(f"{args.root} is not a directory")
    server = RangeServer(args.root, args.latency_ms / 1000, args.port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with server:
        print(f"serving {server.root} at {server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
