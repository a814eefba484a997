"""Data provenance: the run writes OLMo's `train_data/global_indices.npy` exactly as OLMo's IterableDataset does
(checked against the file ai2-olmo 0.6.0 wrote for tests/fixtures/olmo, and against an independent implementation
of OLMo's algorithm on uneven multi-file data, across an epoch boundary and from a start step mid-run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from olmo_jax.config import load_config
from olmo_jax.data.order import Batches
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.train.trainer import train

FIXTURES = ROOT / "tests" / "fixtures" / "olmo"
MICRO = ROOT / "tests" / "configs" / "micro.py"


def olmo_order(file_sizes_in_tokens: list[int], seq_len: int, seed: int, epoch: int, world_size: int) -> np.ndarray:
    """OLMo's algorithm, written from its description (docs/olmo_facts.md §5.3), independently of olmo_jax: each
    file holds size // seq_len instances, numbered across files in order; a PCG64(seed + epoch) shuffle of them as
    uint32; drop_last keeps a multiple of the world size."""
    n = sum(size // seq_len for size in file_sizes_in_tokens)
    order = np.arange(n, dtype=np.uint32)
    np.random.Generator(np.random.PCG64(seed=seed + epoch)).shuffle(order)
    total = (n // world_size) * world_size if n % world_size else n
    return order[:total]


def test_our_order_is_the_file_olmo_wrote() -> None:
    batches = Batches(TokenFiles((str(FIXTURES / "tokens.npy"),), "uint16", 32), 6198, 4, 2)
    olmo = np.fromfile(FIXTURES / "run" / "train_data" / "global_indices.npy", np.uint32)
    assert batches.epoch_order(0).dtype == np.uint32 and np.array_equal(batches.epoch_order(0), olmo)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two token files of uneven sizes, neither a multiple of the sequence length (16)."""
    folder = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(3)
    a, b = folder / "a.npy", folder / "b.npy"
    rng.integers(0, 250, 16 * 37 + 5, dtype=np.uint16).tofile(a)
    rng.integers(0, 250, 16 * 22 + 9, dtype=np.uint16).tofile(b)
    return a, b


def _written(run_dir: Path) -> np.ndarray:
    raw = (run_dir / "train_data" / "global_indices.npy").read_bytes()
    assert len(raw) % 4 == 0 and not raw.startswith(b"\x93NUMPY")  # raw uint32, no .npy header, as OLMo writes it
    return np.frombuffer(raw, np.uint32)


@pytest.mark.slow
def test_a_run_writes_olmos_global_indices_at_the_start_and_at_each_epoch(uneven: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    """59 instances, global batch 8: 7 steps per epoch. A run to step 5 writes epoch 0's order; resumed from there
    to step 10 it writes epoch 1's when the epoch turns (after step 7); a run started mid-epoch (from step 10's
    checkpoint) writes the order of the epoch it starts in."""
    a, b = uneven
    sizes = [a.stat().st_size // 2, b.stat().st_size // 2]
    common = [f"data.paths={a}", f"data.paths={b}", f"save_folder={tmp_path}", "max_duration=16", "save_interval=5",
              "tensorboard=False"]
    train(load_config(MICRO, [*common, "stop_at=5"]))
    assert np.array_equal(_written(tmp_path), olmo_order(sizes, 16, 6198, 0, 1))
    train(load_config(MICRO, [*common, "stop_at=10"]))
    assert np.array_equal(_written(tmp_path), olmo_order(sizes, 16, 6198, 1, 1))
    (tmp_path / "train_data" / "global_indices.npy").unlink()
    train(load_config(MICRO, [*common, "stop_at=16"]))  # resumes at step 10 (epoch 1), crosses into epoch 2 at 14
    assert np.array_equal(_written(tmp_path), olmo_order(sizes, 16, 6198, 2, 1))
