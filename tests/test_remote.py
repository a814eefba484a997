"""Token files at URLs, against a local HTTP server with byte ranges, latency and injected faults
(tools/range_server.py): the same batches as from disk, resume, retries, timeouts, the cache, the promised errors,
gs:// and s3:// through tensorstore's drivers, and a training run that loses its data mid-run."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import recipe, run_python, write_patterned_tokens
from test_data import T, expected_rows, numbered_files

from olmo_jax.data import prefetch
from olmo_jax.data.config import DataConfig, RemoteOptions, is_url
from olmo_jax.data.order import Batches
from olmo_jax.data.remote import RemoteStore, kvstore_spec
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.errors import ConfigError, DataError, RemoteError
from tools.range_server import RangeServer


def remote_options(**overrides: object) -> RemoteOptions:
    """The recipe's remote-read options (configs/1b.py) with `overrides`."""
    return dataclasses.replace(recipe().data.remote_options(), **overrides)


def data_config(**overrides: object) -> DataConfig:
    return dataclasses.replace(recipe().data, **overrides)


FAST = remote_options(retries=2, backoff=0.001, timeout=10.0)  # tiny backoff keeps failing tests quick


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    numbered_files(root, [23, 9, 40], extra=5)  # part-0.npy … part-2.npy, each with a leftover tail
    (root / "odd.npy").write_bytes(b"\0" * 33)  # not a whole number of uint16
    (root / "bucket" / "dir").mkdir(parents=True)
    for f in range(3):  # the same files as objects of a bucket, for gs:// and s3://
        (root / "bucket" / "dir" / f"part-{f}.npy").write_bytes((root / f"part-{f}.npy").read_bytes())
    return root


@pytest.fixture(scope="module")
def module_server(data_dir: Path) -> Iterator[RangeServer]:
    with RangeServer(data_dir) as server:
        yield server


@pytest.fixture
def server(module_server: RangeServer) -> Iterator[RangeServer]:
    module_server.clear_faults()
    yield module_server
    module_server.clear_faults()


def closed_port() -> int:
    """A port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_paths(data_dir: Path) -> list[str]:
    return [str(data_dir / f"part-{f}.npy") for f in range(3)]


def urls(server: RangeServer) -> list[str]:
    return [f"{server.url}/part-{f}.npy" for f in range(3)]


# --- URLs → tensorstore specs ---------------------------------------------------------------------------------------

def test_urls_map_to_tensorstore_key_value_stores() -> None:
    assert kvstore_spec("https://olmo-data.org/v1_5/part-001-00000.npy") == {
        "driver": "http", "base_url": "https://olmo-data.org", "path": "/v1_5/part-001-00000.npy"}
    assert kvstore_spec("https://h:8080/a%20b.npy?sig=x") == {
        "driver": "http", "base_url": "https://h:8080?sig=x", "path": "/a b.npy"}  # a signed URL keeps its query
    assert kvstore_spec("gs://my-bucket/dolma/part-1.npy") == {
        "driver": "gcs", "bucket": "my-bucket", "path": "dolma/part-1.npy"}
    assert kvstore_spec("s3://bkt/k/x.npy") == {"driver": "s3", "bucket": "bkt", "path": "k/x.npy"}
    assert kvstore_spec("s3://bkt/k/x.npy", "http://minio:9000")["endpoint"] == "http://minio:9000"
    assert kvstore_spec("gs://bkt/x.npy", "http://minio:9000") == {"driver": "gcs", "bucket": "bkt", "path": "x.npy"}
    assert is_url("gs://b/x") and is_url("HTTP://h/x") and not is_url("data/x.npy") and not is_url("/abs/x.npy")
    with pytest.raises(RemoteError, match=r"ftp://h/x\.npy: unsupported URL scheme ftp://"):
        kvstore_spec("ftp://h/x.npy")
    with pytest.raises(RemoteError, match=r"gs://bkt/dir/ names a bucket or a directory"):
        kvstore_spec("gs://bkt/dir/")
    with pytest.raises(RemoteError, match=r"gs://Bad_Bucket!/x is not a valid gs:// URL"):
        kvstore_spec("gs://Bad_Bucket!/x")


def test_data_config_remote_keys_are_validated() -> None:
    options = data_config(remote_retries=3, remote_backoff=0.25, cache_dir="/c", cache_chunk_mb=0.5).remote_options()
    assert (options.retries, options.backoff, options.cache_dir, options.cache_chunk_bytes) == (3, 0.25, "/c", 2**19)
    with pytest.raises(ConfigError, match=r"data\.remote_retries=-1 must be ≥ 0"):
        data_config(remote_retries=-1)
    with pytest.raises(ConfigError, match=r"data\.remote_timeout=0 must be positive"):
        data_config(remote_timeout=0)


# --- the same data as from disk --------------------------------------------------------------------------------------

def test_batches_from_urls_equal_batches_from_files(server: RangeServer, data_dir: Path) -> None:
    local = TokenFiles(local_paths(data_dir), "uint16", T)
    remote = TokenFiles(urls(server), "uint16", T, remote=FAST)
    assert remote.sizes == local.sizes and remote.num_instances == 72
    assert remote.fingerprint() == local.fingerprint() | {"paths": urls(server)}
    gets = server.gets()
    for step in (0, 1, 5, 17):  # 17: the second epoch
        want = Batches(local, 6198, 8, 2).batch_at(step)
        np.testing.assert_array_equal(Batches(remote, 6198, 8, 2, vocab_size=50_000).batch_at(step), want)
        # Two processes each read their own columns; side by side they are the one-process batch.
        halves = [Batches(remote, 6198, 8, 2, dp_world_size=2, process_index=p, process_count=2).batch_at(step)
                  for p in range(2)]
        np.testing.assert_array_equal(np.concatenate(halves, axis=1), Batches(local, 6198, 8, 2, 2).batch_at(step))
    assert server.gets() - gets == 4 * 2 * 8  # one ranged GET per row, nothing else
    assert all(re.fullmatch(r"bytes=\d+-\d+", r) for m, _, r in server.requests[-8:] if m == "GET")


def test_local_paths_and_urls_mix(server: RangeServer, data_dir: Path) -> None:
    paths = [str(data_dir / "part-0.npy"), f"{server.url}/part-1.npy", str(data_dir / "part-2.npy")]
    files = TokenFiles(paths, "uint16", T, remote=FAST)
    order = np.array([[0, 30, 23], [71, 31, 22]])  # files 0, 2, 1 / 2, 1, 0
    np.testing.assert_array_equal(files.read(order), expected_rows(order))


def test_resume_at_step_k_equals_continuing(server: RangeServer) -> None:
    batches = Batches(TokenFiles(urls(server), "uint16", T, remote=FAST), 6198, 8, 2)
    with batches.prefetch(0, 12, depth=3) as it:
        straight = dict(it)
    resumed = Batches(TokenFiles(urls(server), "uint16", T, remote=FAST), 6198, 8, 2)  # a new process, in effect
    with resumed.prefetch(7, 12, depth=3) as it:
        for step, batch in it:
            np.testing.assert_array_equal(batch, straight[step])


def test_gs_and_s3_urls_read_through_their_drivers(server: RangeServer, data_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", server.url)  # tensorstore's gcs driver talks to our server
    monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "test-token")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    local = TokenFiles(local_paths(data_dir), "uint16", T)
    order = np.array([[3, 40, 71], [25, 0, 50]])
    for scheme, options in (("gs", FAST), ("s3", remote_options(retries=2, backoff=0.001, s3_endpoint=server.url))):
        before = len(server.requests)
        files = TokenFiles([f"{scheme}://bucket/dir/part-{f}.npy" for f in range(3)], "uint16", T, remote=options)
        assert files.sizes == local.sizes  # found by one-byte reads: gcs and s3 sizes are not exposed
        np.testing.assert_array_equal(files.read(order), expected_rows(order))
        names = {name for _, name, _ in server.requests[before:]}  # s3 also asks for the bucket itself
        assert {f"bucket/dir/part-{f}.npy" for f in range(3)} <= names <= {"bucket", *(f"bucket/dir/part-{f}.npy"
                                                                                        for f in range(3))}
        server.fail(403, name="bucket/dir/part-1.npy")
        with pytest.raises(DataError, match=rf"^Credentials expired or missing for {scheme}://bucket/dir/part-1\.npy"):
            TokenFiles([f"{scheme}://bucket/dir/part-1.npy"], "uint16", T, remote=options)
        server.clear_faults()
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(DataError, match=r"^Finding the size of gs://bucket/dir/part-0\.npy \(one-byte reads\) failed "
                                        r"after 2 retries: CURL error Could not connect"):
        TokenFiles(["gs://bucket/dir/part-0.npy"], "uint16", T, remote=FAST)


def test_a_server_without_head_is_sized_by_ranged_reads(server: RangeServer, data_dir: Path) -> None:
    server.fail(405, method="HEAD")
    store = RemoteStore(FAST)
    for n in (0, 1, 4095, 4096, 100_001):
        (data_dir / f"size-{n}.bin").write_bytes(b"x" * n)
        assert store.size(f"{server.url}/size-{n}.bin") == n


# --- retries, timeouts and the promised errors ------------------------------------------------------------------

def test_transient_500s_are_retried(server: RangeServer) -> None:
    files = TokenFiles(urls(server), "uint16", T, remote=FAST)
    server.fail(500, name="part-2.npy", times=2)
    server.fail(503, name="part-0.npy", times=1)
    gets = server.gets()
    order = np.array([40, 60, 1])
    np.testing.assert_array_equal(files.read(order), expected_rows(order))
    assert server.gets() - gets == 3 + 3  # three rows, three failed requests (tensorstore retries one at once)


def test_persistent_500_is_one_error_after_the_retries(server: RangeServer) -> None:
    files = TokenFiles(urls(server), "uint16", T, remote=FAST)
    server.fail(500, name="part-1.npy")
    gets = server.gets("part-1.npy")
    with pytest.raises(DataError, match=rf"^Reading bytes \[32, 64\) of {server.url}/part-1\.npy failed after 2 "
                                        r"retries: Internal Server Error \[HTTP code 500\]\. Check the store"):
        files.read(np.array([24]))
    assert server.gets("part-1.npy") - gets == 3 * 2  # 1 + 2 retries, each with tensorstore's immediate retry
    with pytest.raises(DataError, match=rf"Cannot get the size of {server.url}/part-1\.npy: 3 attempts failed, the "
                                        r"last with HTTP 500"):
        TokenFiles(urls(server), "uint16", T, remote=FAST)


def test_unanswered_requests_are_reissued_then_given_up(server: RangeServer) -> None:
    options = remote_options(retries=2, backoff=0.001, timeout=0.3)
    files = TokenFiles(urls(server), "uint16", T, remote=options)
    server.fail(None, name="part-0.npy", times=1, delay=3.0)  # the first read stalls, its re-issue is answered
    start = time.monotonic()
    np.testing.assert_array_equal(files.read(np.array([5])), expected_rows(np.array([5])))
    assert time.monotonic() - start < 2.5
    server.fail(None, name="part-0.npy", delay=1.0)
    with pytest.raises(DataError, match=rf"^Reading bytes \[160, 192\) of {server.url}/part-0\.npy failed after 2 "
                                        r"retries: no answer within data\.remote_timeout=0\.3 s\. Check the store"):
        files.read(np.array([5]))


def test_closing_does_not_wait_for_a_stalled_read(server: RangeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefetch, "_JOIN_S", 0.3)
    batches = Batches(TokenFiles(urls(server), "uint16", T, remote=FAST), 6198, 8, 2)
    server.fail(None, delay=5.0)  # every request hangs for 5 s, well within the 10 s timeout
    it = batches.prefetch(0, 10, depth=2)
    time.sleep(0.2)  # the thread is waiting for batch 0's rows
    start = time.monotonic()
    it.close()  # e.g. SIGTERM: the checkpoint is saved, the run must exit now
    assert time.monotonic() - start < 3.0
    with pytest.raises(StopIteration):
        next(it)


def test_errors_name_the_url(server: RangeServer, data_dir: Path) -> None:
    with pytest.raises(DataError, match=rf"^{server.url}/missing\.npy was not found \(HTTP 404\)"):
        TokenFiles([f"{server.url}/missing.npy"], "uint16", T, remote=FAST)
    with pytest.raises(DataError, match=rf"^Token file {server.url}/odd\.npy has 33 bytes, not a multiple of 2"):
        TokenFiles([f"{server.url}/odd.npy"], "uint16", T, remote=FAST)
    for status in (401, 403):
        server.fail(status, name="part-0.npy")
        with pytest.raises(DataError, match=rf"^Credentials expired or missing for {server.url}/part-0\.npy: "
                                            r"PERMISSION_DENIED.*GOOGLE_APPLICATION_CREDENTIALS.*AWS_ACCESS_KEY_ID"):
            TokenFiles(urls(server), "uint16", T, remote=FAST)
        server.clear_faults()
    closed = f"http://127.0.0.1:{closed_port()}/part-0.npy"
    with pytest.raises(DataError, match=rf"^Cannot get the size of {closed}: 3 attempts failed, the last with cannot "
                                        r"reach the server: \[Errno 111\] Connection refused"):
        TokenFiles([closed], "uint16", T, remote=FAST)
    with pytest.raises(DataError, match=r"unsupported URL scheme ftp://"):
        TokenFiles(["ftp://host/x.npy"], "uint16", T)
    server.ranges = False  # a server that would send the whole file for every row
    try:
        with pytest.raises(DataError, match=rf"^{server.url}/part-0\.npy does not answer byte-range requests \(HTTP "
                                            r"200 to `Range: bytes=0-0`\)"):
            TokenFiles(urls(server), "uint16", T, remote=FAST)
    finally:
        server.ranges = True
    files = TokenFiles(urls(server), "uint16", T, remote=FAST)
    server.fail(404, name="part-2.npy")  # deleted mid-run
    with pytest.raises(DataError, match=rf"^{server.url}/part-2\.npy was not found"):
        files.read(np.array([50]))


# --- the cache -----------------------------------------------------------------------------------------------------

def test_cache_serves_a_second_pass_and_a_restart_without_the_network(data_dir: Path, tmp_path: Path) -> None:
    options = remote_options(retries=1, backoff=0.001, cache_dir=str(tmp_path / "cache"), cache_chunk_bytes=200)
    order = np.random.default_rng(0).permutation(72).reshape(8, 9)  # every instance, in a random order
    with RangeServer(data_dir) as server:
        files = TokenFiles(urls(server), "uint16", T, remote=options)
        np.testing.assert_array_equal(files.read(order), expected_rows(order))
        chunk_gets = server.gets()
        # Each 200-byte chunk holding instances fetched once (a chunk of only a file's leftover tail never).
        assert chunk_gets == sum(-(-n * T * 2 // 200) for n in np.diff(files.offsets))
        restarted = TokenFiles(urls(server), "uint16", T, remote=options)  # a new run: sizes from the server
        np.testing.assert_array_equal(restarted.read(order[::-1]), expected_rows(order[::-1]))
        assert server.gets() == chunk_gets  # ... and every byte from the cache
    np.testing.assert_array_equal(files.read(order), expected_rows(order))  # server stopped: still readable
    sources = sorted(p.read_text() for p in (tmp_path / "cache").glob("*/source.json"))
    assert len(sources) == 3 and f'"url": "{server.url}/part-0.npy"' in sources[0]


def test_a_partial_chunk_is_never_served(data_dir: Path, tmp_path: Path) -> None:
    options = remote_options(retries=1, backoff=0.001, cache_dir=str(tmp_path / "cache"), cache_chunk_bytes=256)
    with RangeServer(data_dir) as server:
        files = TokenFiles(urls(server), "uint16", T, remote=options)
        files.read(np.arange(72))
        cache = files._store.cache
        chunk = cache.chunk_path(f"{server.url}/part-2.npy", files.sizes[2], 1)  # bytes [256, 512) of part-2
        chunk.write_bytes(chunk.read_bytes()[:100])  # what a torn write would leave
        leftover = chunk.with_name(f"{chunk.name}.tmp-1234-5678")  # a killed writer's temporary
        leftover.write_bytes(b"\xff" * 256)
        gets = server.gets()
        rows = np.array([32 + 8, 32 + 12])  # part-2's instances 8 and 12: its bytes [256, 288) and [384, 416)
        np.testing.assert_array_equal(TokenFiles(urls(server), "uint16", T, remote=options).read(rows),
                                      expected_rows(rows))
        assert server.gets() - gets == 1 and server.requests[-1][2] == "bytes=256-511"  # fetched again, once
        assert chunk.stat().st_size == 256


# --- a training run whose data server fails for good ---------------------------------------------------------------

@pytest.mark.slow
def test_training_from_a_url_stops_on_a_persistent_error_and_resumes(tmp_path: Path) -> None:
    from test_trainer import MICRO, _losses

    from olmo_jax.config import load_config
    from olmo_jax.train.trainer import train

    write_patterned_tokens(tmp_path / "tokens.npy", 100)  # 250 instances of 16 tokens: 31 steps per epoch
    with RangeServer(tmp_path) as server:
        def config(run: str, path: str):
            return load_config(MICRO, [f"data.paths={path}", f"save_folder={tmp_path / run}", "max_duration=8",
                                       "data.remote_retries=1", "data.remote_backoff=0.001"])

        server.fail(500, name="tokens.npy", after=2 + 5 * 8)  # the HEAD, the dtype check, then five batches of 8
        with pytest.raises(DataError, match=rf"^Reading bytes \[\d+, \d+\) of {server.url}/tokens\.npy failed after "
                                            r"1 retry: Internal Server Error \[HTTP code 500\]\. Check the store"):
            train(config("run", f"{server.url}/tokens.npy"))
        assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()) == [4]  # save_interval 4
        first = _losses(tmp_path / "run")
        assert max(first) == 5  # step 6 needed the sixth batch

        server.clear_faults()
        assert train(config("run", f"{server.url}/tokens.npy")) == 8  # resumes from step 4 ...
    assert _losses(tmp_path / "run")[5] == first[5]  # ... and redoes step 5 bitwise


@pytest.mark.slow
def test_bench_reports_local_streamed_and_cached_rates() -> None:
    result = run_python("tools/bench_remote.py", "--config=configs/tiny.py", "--mb", "2", "--files", "2", "--batches",
                        "6", "--warmup", "1", "--repeats", "2", "--latencies", "0", "30", "--cache", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["batch_shape"] == [2, 8, 128] and report["prefetch_depth"] == 8 and report["files"] == 2
    rows = [(r["source"], r["latency_ms"], r["warm_cache"]) for r in report["results"]]
    assert rows == [("local file", None, False), ("http", 0, False), ("http", 0, True), ("http", 30, False),
                    ("http", 30, True)]
    for r in report["results"]:
        assert 0 < r["tokens_per_second_min"] <= r["tokens_per_second_median"] <= r["tokens_per_second_max"]
    # 30 ms per request, one round trip per batch of 2 × 8 rows of 128 tokens: ~2048 / 0.03 tokens/s at best (×2
    # for batches the prefetcher may have built before the clock started).
    assert report["results"][3]["tokens_per_second_max"] < 2 * 2048 / 0.03
