"""Data provenance: the run writes OLMo's `train_data/global_indices.npy` exactly as OLMo's IterableDataset does
(checked against the file ai2-olmo 0.6.0 wrote for tests/fixtures/olmo, and against an independent implementation
of OLMo's algorithm on uneven multi-file data, across an epoch boundary and from a start step mid-run)."""

from __future__ import annotations

import json
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


def _ledger_lines(run_dir: Path) -> list[str]:
    return (run_dir / "data_ledger.jsonl").read_text().splitlines()


@pytest.mark.slow
def test_the_ledger_of_a_killed_and_resumed_run_is_the_straight_runs(uneven: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """A run killed after step 8 whose last checkpoint is step 5 (what kill -9 between saves leaves: the ledger has
    steps 6-8 that resume trains again) resumes to step 10 with a ledger equal to an unbroken run's, every step
    once and in order, and equal to the ledger tools/inspect_data.py computes without training."""
    from conftest import run_python

    a, b = uneven
    common = [f"data.paths={a}", f"data.paths={b}", "max_duration=10", "save_interval=5", "tensorboard=False"]
    train(load_config(MICRO, [*common, f"save_folder={tmp_path / 'straight'}"]))
    broken = tmp_path / "broken"
    train(load_config(MICRO, [*common, f"save_folder={broken}", "stop_at=8"]))
    import shutil

    shutil.rmtree(broken / "checkpoints" / "8")  # the kill came before step 8's checkpoint was complete
    assert [json.loads(line)["step"] for line in _ledger_lines(broken)] == list(range(1, 9))
    train(load_config(MICRO, [*common, f"save_folder={broken}"]))
    assert _ledger_lines(broken) == _ledger_lines(tmp_path / "straight")
    assert [json.loads(line)["step"] for line in _ledger_lines(broken)] == list(range(1, 11))
    offline = run_python("tools/inspect_data.py", f"--config={MICRO}", f"--config.data.paths={a}",
                         f"--config.data.paths={b}", "--ledger", "1:10")
    assert offline.returncode == 0, offline.stderr[-2000:]
    assert offline.stdout.splitlines() == _ledger_lines(broken)
    same = run_python("tools/inspect_data.py", "--compare-ledgers", str(broken / "data_ledger.jsonl"),
                      str(tmp_path / "straight" / "data_ledger.jsonl"))
    assert same.returncode == 0 and "steps 1-10 (10 in both) are identical" in same.stdout
    other = tmp_path / "other.jsonl"
    lines = _ledger_lines(broken)
    lines[6] = lines[6].replace(json.loads(lines[6])["tokens"], "0" * 16)
    other.write_text("\n".join(lines) + "\n")
    differs = run_python("tools/inspect_data.py", "--compare-ledgers", str(broken / "data_ledger.jsonl"), str(other))
    assert differs.returncode == 1 and differs.stdout.startswith("first difference at step 7: tokens differ")


def test_the_ledger_hashes_are_what_the_docs_say(uneven: tuple[Path, Path]) -> None:
    """BLAKE2b-64 of the batch's ids as little-endian uint32 in global order, and of its instances as uint64."""
    import hashlib

    from olmo_jax.data.ledger import ledger

    a, b = uneven
    files = TokenFiles((str(a), str(b)), "uint16", 16)
    batches = Batches(files, 6198, 8, 2)
    record = next(iter(ledger(batches, 8, 9)))  # batch 8: the second of epoch 1
    rows = olmo_order([a.stat().st_size // 2, b.stat().st_size // 2], 16, 6198, 1, 1)[8:16].astype("<u8")
    tokens = np.concatenate([np.fromfile(a, np.uint16), np.fromfile(b, np.uint16)])
    starts = [(int(r) * 16 if r < 37 else a.stat().st_size // 2 + (int(r) - 37) * 16) for r in rows]
    ids = np.stack([tokens[s:s + 16] for s in starts]).astype("<u4")
    assert record == {"step": 9, "tokens": hashlib.blake2b(ids.tobytes(), digest_size=8).hexdigest(),
                      "instances": hashlib.blake2b(rows.tobytes(), digest_size=8).hexdigest()}


def _shown(output: str) -> list[str]:
    """The instance lines of tools/inspect_data.py --step, without the file names."""
    return [line.split(" = ")[0] + " @" + line.split(" @")[1] for line in output.splitlines() if " instance " in line]


@pytest.mark.slow
def test_an_olmo_yaml_with_urls_shows_the_same_instances_as_the_files(tmp_path: Path) -> None:
    """OLMo's own config.yaml, at a URL and pointed at the fixture's tokens over HTTP (a local range server): step N's
    instances
    and token ranges are those of the same file on disk, and of OLMo's own run; without --no-text no byte of the
    data is read, only the file's size."""
    import yaml
    from conftest import run_python

    from tools.range_server import RangeServer

    olmo = yaml.safe_load((FIXTURES / "run" / "config.yaml").read_text())
    served = tmp_path / "served"
    served.mkdir()
    (served / "tokens.npy").write_bytes((FIXTURES / "tokens.npy").read_bytes())
    with RangeServer(served) as server:
        olmo["data"]["paths"] = [f"{server.url}/tokens.npy"]
        (served / "OLMo-tiny.yaml").write_text(yaml.safe_dump(olmo))  # the YAML at a URL too
        remote = run_python("tools/inspect_data.py", f"--config=configs/olmo_yaml.py:{server.url}/OLMo-tiny.yaml",
                            "--step", "4", "--no-text", env={"OLMO_JAX_CACHE": str(tmp_path / "cache")})
        got = [r for r in server.requests if r[1] == "tokens.npy"]  # (method, file, Range)
    local = run_python("tools/inspect_data.py", f"--config=configs/olmo_yaml.py:{FIXTURES / 'run' / 'config.yaml'}",
                       f"--config.data.paths={FIXTURES / 'tokens.npy'}", "--step", "4", "--no-text")
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr[-2000:] + local.stderr[-2000:]
    assert _shown(remote.stdout) == _shown(local.stdout) and len(_shown(local.stdout)) == 4
    olmo_step5 = json.loads((FIXTURES / "losses.json").read_text())["steps"]["5"]["indices"]
    assert [int(line.split("instance ")[1].split()[0]) for line in _shown(local.stdout)] == olmo_step5
    gets = [r for r in got if r[0] == "GET"]  # the size (HEAD), and the uint32 check's read of the file's start
    assert len(gets) <= 1 and all(r[2].startswith("bytes=0-") for r in gets), got


def test_global_indices_are_written_read_back_and_checked(tmp_path: Path) -> None:
    from conftest import run_python

    config = [f"--config=configs/olmo_yaml.py:{FIXTURES / 'run' / 'config.yaml'}",
              f"--config.data.paths={FIXTURES / 'tokens.npy'}"]
    out = tmp_path / "global_indices.npy"
    wrote = run_python("tools/inspect_data.py", *config, "--write-global-indices", str(out))
    assert wrote.returncode == 0, wrote.stderr[-2000:]
    assert out.read_bytes() == (FIXTURES / "run" / "train_data" / "global_indices.npy").read_bytes()
    again = run_python("tools/inspect_data.py", *config, "--write-global-indices", str(out))
    assert again.returncode == 1 and "never replaces a file" in again.stderr
    used = run_python("tools/inspect_data.py", *config, "--global-indices", str(out), "--step", "4", "--no-text")
    assert used.returncode == 0 and "instance 237 " in used.stdout, used.stderr[-2000:]
    short = tmp_path / "short.npy"
    short.write_bytes(out.read_bytes()[:-8])
    wrong = run_python("tools/inspect_data.py", *config, "--global-indices", str(short), "--step", "4")
    assert wrong.returncode == 1 and wrong.stderr.count("error:") == 1
    assert "holds 248 indices, but this config's epoch 0 has 250" in wrong.stderr


def test_an_olmo_yaml_with_data_options_we_do_not_reproduce_is_one_error(tmp_path: Path) -> None:
    import yaml
    from conftest import run_python

    olmo = yaml.safe_load((FIXTURES / "run" / "config.yaml").read_text())
    olmo["data"]["instance_filter"] = {"repetition_max_period": 13}
    (tmp_path / "filtered.yaml").write_text(yaml.safe_dump(olmo))
    proc = run_python("tools/inspect_data.py", f"--config=configs/olmo_yaml.py:{tmp_path / 'filtered.yaml'}",
                      "--step", "0", "--no-text")
    assert proc.returncode == 1 and proc.stderr.count("error:") == 1, proc.stderr[-2000:]
    assert "data.instance_filter" in proc.stderr and "Traceback" not in proc.stderr


def test_a_url_whose_size_cannot_be_had_is_one_error(tmp_path: Path) -> None:
    import yaml
    from conftest import run_python

    from tools.range_server import RangeServer

    olmo = yaml.safe_load((FIXTURES / "run" / "config.yaml").read_text())
    with RangeServer(tmp_path) as server:
        olmo["data"]["paths"] = [f"{server.url}/missing.npy"]
        (tmp_path / "missing.yaml").write_text(yaml.safe_dump(olmo))
        proc = run_python("tools/inspect_data.py", f"--config=configs/olmo_yaml.py:{tmp_path / 'missing.yaml'}",
                          "--step", "0", "--no-text", "--config.data.remote_retries=0")
    assert proc.returncode == 1 and proc.stderr.count("error:") == 1, proc.stderr[-2000:]
    assert "missing.npy" in proc.stderr and "Traceback" not in proc.stderr
