"""Token files, OLMo's global order, per-process rows, the prefetching iterator, and the promised errors."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_python

from olmo_jax.config import load_config
from olmo_jax.data.order import Batches, global_indices, row_positions
from olmo_jax.data.prefetch import Prefetcher
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.errors import ConfigError, DataError

T = 16  # instance length in these tests


def write_tokens(path: Path, tokens: np.ndarray, dtype: str = "uint16") -> str:
    """A headerless raw token file, as OLMo's prepare script writes it."""
    np.asarray(tokens, dtype).tofile(path)
    return str(path)


def numbered_files(tmp_path: Path, instances: list[int], dtype: str = "uint16", extra: int = 0) -> list[str]:
    """Files whose token at position t of global instance g is (g·T + t) % 50000, plus `extra` leftover tokens."""
    paths, start = [], 0
    for f, n in enumerate(instances):
        tokens = (np.arange(start * T, (start + n) * T + extra) % 50_000).astype(dtype)
        paths.append(write_tokens(tmp_path / f"part-{f}.npy", tokens, dtype))
        start += n
    return paths


def expected_rows(instances: np.ndarray) -> np.ndarray:
    return ((np.asarray(instances)[..., None] * T + np.arange(T)) % 50_000).astype(np.int32)


# --- global order: the spec's test vectors (§5.3) and drop_last ---------------------------------------------------

def test_global_order_matches_olmo_test_vectors() -> None:
    np.testing.assert_array_equal(global_indices(10, 6198, 0, 1), [2, 4, 7, 3, 8, 9, 0, 6, 1, 5])
    np.testing.assert_array_equal(global_indices(10, 6198, 1, 1), [6, 4, 1, 8, 3, 2, 5, 9, 0, 7])
    np.testing.assert_array_equal(
        global_indices(1_000_003, 6198, 0, 1)[:10],
        [896400, 797200, 915213, 811702, 781115, 26449, 866658, 412876, 267973, 464079],
    )
    assert global_indices(10, 6198, 0, 1).dtype == np.uint32


def test_drop_last_truncates_the_shuffle_to_the_world_size() -> None:
    full = global_indices(10, 6198, 0, 1)
    np.testing.assert_array_equal(global_indices(10, 6198, 0, 4), full[:8])
    np.testing.assert_array_equal(global_indices(10, 6198, 0, 5), full)


# --- token files -------------------------------------------------------------------------------------------------

def test_files_are_raw_arrays_concatenated_in_order_with_leftovers_dropped(tmp_path: Path) -> None:
    paths = numbered_files(tmp_path, [3, 2, 4], extra=T - 1)  # each file ends with an incomplete instance
    files = TokenFiles(paths, "uint16", T)
    assert files.num_instances == 9
    np.testing.assert_array_equal(files.offsets, [0, 3, 5, 9])
    assert files.locate(3) == (1, 0) and files.locate(4) == (1, T)
    # Instance 3 is the first of file 1, not the leftover tail of file 0 joined to file 1's head.
    order = np.array([[3, 0], [8, 4]])
    np.testing.assert_array_equal(files.read(order), expected_rows(order))
    assert files.read(order).dtype == np.int32


def test_uint32_files_and_one_file_batches(tmp_path: Path) -> None:
    tokens = np.arange(5 * T, dtype=np.uint32) + 70_000  # ids above uint16's range
    files = TokenFiles([write_tokens(tmp_path / "big.npy", tokens, "uint32")], "uint32", T)
    np.testing.assert_array_equal(files.read(np.array([4, 1])), tokens.reshape(5, T)[[4, 1]])


def test_at_most_max_open_files_are_mapped(tmp_path: Path) -> None:
    files = TokenFiles(numbered_files(tmp_path, [1] * 5), "uint16", T, max_open_files=2)
    ids = np.array([4, 0, 3, 1, 2, 0])
    np.testing.assert_array_equal(files.read(ids), expected_rows(ids))
    assert len(files._open) == 2


# --- batches: layout, epochs, resume, processes --------------------------------------------------------------------

def olmo_rank_microbatches(order: np.ndarray, step: int, G: int, W: int, rank: int, micro: int) -> list[np.ndarray]:
    """What OLMo feeds rank `rank` at 0-based step `step`: strided rank indices, device batches of G/W rows,
    micro-batches of `micro` consecutive rows (IterableDataset, DataLoader, Trainer.split_batch; §5.3)."""
    rank_indices = order[rank::W]
    device_batch = rank_indices[step * (G // W):(step + 1) * (G // W)]
    return [device_batch[i:i + micro] for i in range(0, len(device_batch), micro)]


@pytest.mark.parametrize(("G", "A", "W"), [(8, 2, 1), (16, 2, 4), (12, 3, 2), (8, 1, 8)])
def test_device_rows_are_olmos_rank_microbatches(tmp_path: Path, G: int, A: int, W: int) -> None:
    files = TokenFiles(numbered_files(tmp_path, [30, 21]), "uint16", T)
    batches = Batches(files, seed=6198, global_batch_size=G, grad_accum=A, dp_world_size=W)
    order = global_indices(51, 6198, 0, W)
    m = G // (W * A)
    for step in range(batches.batches_per_epoch):
        ids = batches.instance_ids(step)
        assert ids.shape == (A, G // A)
        # The global batch is positions [step·G, (step+1)·G) of the epoch's order.
        assert sorted(ids.ravel()) == sorted(order[step * G:(step + 1) * G])
        for rank in range(W):
            micro = olmo_rank_microbatches(order, step, G, W, rank, m)
            for k in range(A):
                np.testing.assert_array_equal(ids[k, rank * m:(rank + 1) * m], micro[k])


def test_one_device_batches_are_consecutive_positions() -> None:
    np.testing.assert_array_equal(row_positions(8, 2, 1), np.arange(8).reshape(2, 4))


def test_epochs_reshuffle_with_seed_plus_epoch_and_drop_the_tail(tmp_path: Path) -> None:
    files = TokenFiles(numbered_files(tmp_path, [11]), "uint16", T)
    batches = Batches(files, seed=5, global_batch_size=4, grad_accum=1, dp_world_size=2)
    assert batches.total_size == 10 and batches.batches_per_epoch == 2  # 11 → 10 (drop_last), 2 batches, 2 dropped
    for epoch in range(3):
        order = global_indices(11, 5 + epoch, 0, 2)
        for within in range(2):
            got = batches.instance_ids(epoch * 2 + within)
            assert sorted(got.ravel()) == sorted(order[within * 4:(within + 1) * 4])


def test_batches_are_a_pure_function_of_the_step_and_resume_matches(tmp_path: Path) -> None:
    files = TokenFiles(numbered_files(tmp_path, [9, 8]), "uint16", T)

    def make() -> Batches:
        return Batches(files, seed=6198, global_batch_size=4, grad_accum=2, vocab_size=50_280)

    n, k = 10, 6  # crosses the epoch boundary (4 batches per epoch)
    with make().prefetch(0, n, depth=2) as it:
        straight = list(it)
    assert [s for s, _ in straight] == list(range(n))
    with make().prefetch(k, n, depth=3) as it:
        resumed = list(it)
    assert [s for s, _ in resumed] == list(range(k, n))
    for (_, a), (_, b) in zip(straight[k:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = make()
    for step, batch in straight:
        assert batch.shape == (2, 2, T) and batch.dtype == np.int32
        np.testing.assert_array_equal(batch, fresh.batch_at(step))
        np.testing.assert_array_equal(batch, expected_rows(fresh.instance_ids(step)))


@pytest.mark.parametrize(("W", "P"), [(2, 2), (4, 2), (8, 4)])
def test_processes_read_disjoint_rows_that_assemble_the_global_batch(tmp_path: Path, W: int, P: int) -> None:
    files = TokenFiles(numbered_files(tmp_path, [40]), "uint16", T)
    kwargs = dict(seed=1, global_batch_size=16, grad_accum=2, dp_world_size=W)
    whole = Batches(files, **kwargs)
    parts = [Batches(files, process_index=p, process_count=P, **kwargs) for p in range(P)]
    for step in (0, 1, whole.batches_per_epoch):
        local = [b.local_instance_ids(step) for b in parts]
        assert all(ids.shape == (2, 8 // P) for ids in local)
        flat = np.concatenate([ids.ravel() for ids in local])
        assert len(set(flat.tolist())) == flat.size  # disjoint
        np.testing.assert_array_equal(np.concatenate(local, axis=1), whole.instance_ids(step))
        np.testing.assert_array_equal(np.concatenate([b.batch_at(step) for b in parts], axis=1),
                                      whole.batch_at(step))


# --- validation: one clear error each -----------------------------------------------------------------------------

def test_empty_path_list_is_an_error() -> None:
    with pytest.raises(DataError, match=r"data\.paths is empty"):
        TokenFiles([], "uint16", T)


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npy"
    with pytest.raises(DataError, match=f"{re.escape(str(missing))} does not exist"):
        TokenFiles([missing], "uint16", T)


def test_file_size_not_a_multiple_of_the_dtype_is_named(tmp_path: Path) -> None:
    path = tmp_path / "odd.npy"
    path.write_bytes(b"\x00" * 7)
    expected = rf"{re.escape(str(path))} has 7 bytes, not a multiple of 2 \(data.memmap_dtype=uint16\)"
    with pytest.raises(DataError, match=expected):
        TokenFiles([path], "uint16", T)


def test_bad_dtype_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="float32"):
        TokenFiles(numbered_files(tmp_path, [1]), "float32", T)


def test_fewer_instances_than_a_global_batch_is_named(tmp_path: Path) -> None:
    paths = numbered_files(tmp_path, [3])
    expected = rf"{re.escape(paths[0])} hold 3 instances of {T} tokens .* one global batch of 4"
    with pytest.raises(DataError, match=expected):
        Batches(TokenFiles(paths, "uint16", T), seed=0, global_batch_size=4, grad_accum=1)


def test_batch_shape_errors(tmp_path: Path) -> None:
    files = TokenFiles(numbered_files(tmp_path, [40]), "uint16", T)
    with pytest.raises(DataError, match=r"global_batch_size=12 is not divisible by .* 4 × 2"):
        Batches(files, seed=0, global_batch_size=12, grad_accum=2, dp_world_size=4)
    with pytest.raises(DataError, match="dp_world_size=4 is not divisible by process_count=3"):
        Batches(files, seed=0, global_batch_size=16, grad_accum=1, dp_world_size=4, process_count=3)


def test_token_id_beyond_the_vocabulary_names_file_offset_and_id(tmp_path: Path) -> None:
    tokens = np.zeros(8 * T, np.uint16)
    tokens[5 * T + 3] = 50_280
    good = write_tokens(tmp_path / "good.npy", np.zeros(8 * T))
    bad = write_tokens(tmp_path / "bad.npy", tokens)
    batches = Batches(TokenFiles([good, bad], "uint16", T), seed=0, global_batch_size=16, grad_accum=1,
                      vocab_size=50_280)
    step = next(s for s in range(batches.batches_per_epoch) if 8 + 5 in batches.instance_ids(s))
    expected = rf"Token id 50280 at token {5 * T + 3} of {re.escape(bad)} \(instance 13, batch {step}\)"
    with pytest.raises(DataError, match=expected):
        batches.batch_at(step)


def test_uint32_ids_that_overflow_int32_are_caught(tmp_path: Path) -> None:
    tokens = np.zeros(2 * T, np.uint32)
    tokens[T + 1] = 2**32 - 5
    batches = Batches(TokenFiles([write_tokens(tmp_path / "a.npy", tokens, "uint32")], "uint32", T), seed=0,
                      global_batch_size=2, grad_accum=1, vocab_size=100_000)
    with pytest.raises(DataError, match=f"Token id {2**32 - 5} at token {T + 1}"):
        batches.batch_at(0)


# --- the prefetcher ------------------------------------------------------------------------------------------------

def test_an_error_in_the_thread_surfaces_at_its_step(tmp_path: Path) -> None:
    def make(step: int) -> int:
        if step == 3:
            raise DataError("bad batch 3")
        return step

    seen = []
    with pytest.raises(DataError, match="bad batch 3"), Prefetcher(make, range(0, 10), depth=2) as it:
        for step, value in it:
            seen.append((step, value))
    assert seen == [(0, 0), (1, 1), (2, 2)]
    assert not it._thread.is_alive()


def test_a_bad_token_file_surfaces_through_prefetch(tmp_path: Path) -> None:
    tokens = np.full(4 * T, 7, np.uint16)
    tokens[-1] = 60_000
    batches = Batches(TokenFiles([write_tokens(tmp_path / "a.npy", tokens)], "uint16", T), seed=0,
                      global_batch_size=4, grad_accum=1, vocab_size=50_280)
    with pytest.raises(DataError, match="Token id 60000"), batches.prefetch(0, 3, depth=2) as it:
        list(it)


def test_close_stops_a_thread_blocked_on_a_full_queue() -> None:
    built = threading.Event()

    def make(step: int) -> int:
        if step == 1:
            built.set()
        return step

    it = Prefetcher(make, range(1_000_000), depth=1)
    assert built.wait(5)
    time.sleep(0.05)  # now blocked putting step 1 into the full queue
    start = time.perf_counter()
    it.close()
    assert time.perf_counter() - start < 1.0
    assert not it._thread.is_alive()
    with pytest.raises(StopIteration):
        next(it)


def test_leaving_the_loop_early_and_transform_in_the_thread(tmp_path: Path) -> None:
    files = TokenFiles(numbered_files(tmp_path, [8]), "uint16", T)
    threads = set()

    def transform(batch: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return batch.sum(axis=-1)

    batches = Batches(files, seed=0, global_batch_size=2, grad_accum=1)
    with batches.prefetch(0, 100, depth=2, transform=transform) as it:
        for step, summed in it:
            np.testing.assert_array_equal(summed, batches.batch_at(step).sum(axis=-1))
            if step == 5:
                break
    assert not it._thread.is_alive()
    assert threads == {"olmo_jax-prefetch"}


_SHUTDOWN_SCRIPT = """
import sys, time
from olmo_jax.data.prefetch import Prefetcher
mode = sys.argv[1]
def make(step):
    time.sleep(0.01)
    return step
if mode == "forgotten":  # never closed, blocked on a full queue at exit
    it = Prefetcher(make, range(10**9), depth=2)
    next(it)
    time.sleep(0.2)
    print("exiting")
elif mode == "interrupt":  # Ctrl-C in the training loop
    try:
        with Prefetcher(make, range(10**9), depth=2) as it:
            for step, _ in it:
                if step == 3:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("interrupted", it._thread.is_alive())
"""


@pytest.mark.parametrize(("mode", "expected"), [("forgotten", "exiting"), ("interrupt", "interrupted False")])
def test_no_hang_at_exit_or_on_interrupt(tmp_path: Path, mode: str, expected: str) -> None:
    script = tmp_path / "shutdown.py"
    script.write_text(_SHUTDOWN_SCRIPT)
    start = time.perf_counter()
    result = run_python(str(script), mode, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
    assert time.perf_counter() - start < 30


def test_data_config_keys_come_from_the_config_files() -> None:
    config = load_config(ROOT / "configs/1b.py", ["data.seed=7", "data.prefetch_depth=2"])
    data = config.data
    assert (data.memmap_dtype, data.seed, data.prefetch_depth) == ("uint16", 7, 2)
    assert config.tokenizer == "allenai_gpt-neox-olmo-dolma-v1_5"
    with pytest.raises(ConfigError, match=r"data\.prefetch_depth=0 must be at least 1"):
        load_config(ROOT / "configs/tiny.py", ["data.prefetch_depth=0"])
