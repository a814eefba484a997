"""tools/inspect_data.py and tools/bench_data.py on small token files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_python

from olmo_jax.config import load_config
from olmo_jax.data.order import Batches, global_indices
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.data.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


def test_inspect_shows_each_rows_instance_file_offset_ids_and_text(tmp_path: Path, tokenizer_json: Path) -> None:
    rng = np.random.default_rng(0)
    paths = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for path, n in zip(paths, (20 * 128 + 5, 13 * 128), strict=True):  # tiny config: 128-token instances
        rng.integers(2, 300, n, dtype=np.uint16).tofile(path)
    overrides = [f"--config.data.paths=({str(paths[0])!r}, {str(paths[1])!r})",
                 f"--config.tokenizer={tokenizer_json}", "--config.model.eos_token_id=0"]
    result = run_python("tools/inspect_data.py", "--config=configs/tiny.py", "--step", "2", "--rows", "5",
                        "--chars", "0", "--dp-world-size", "2", *overrides)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("batch 2 (OLMo global_step 3), epoch 1 (shuffle seed 6199): 16 instances of 128")

    config = load_config(ROOT / "configs/tiny.py", overrides)
    files = TokenFiles(config.data.paths, "uint16", 128)
    assert Batches(files, 6198, 16, 1, 2).batches_per_epoch == 2  # 33 instances → 32 (drop_last to 2 devices)
    tokenizer = Tokenizer(tokenizer_json, eos_token_id=0)
    positions = global_indices(33, 6198 + 1, 0, 2)[:16]  # batch 2 is the first of epoch 1
    for q in range(5):
        instance = int(positions[q])
        f, offset = files.locate(instance)
        header, ids_line, text_line = lines[1 + 3 * q:4 + 3 * q]
        device = q % 2  # OLMo deals positions to ranks strided
        where = f"{files.paths[f]} @ token {offset} (to {offset + 128})"  # the instance's token range
        assert header == f"[{q}] instance {instance} = {where} (device {device}, micro-step 0)"
        row = files.read(np.array([instance]))[0]
        assert ids_line == f"    ids {row[:16].tolist()}"
        assert json.loads(text_line.removeprefix("    text ")) == tokenizer.decode(row.tolist(), False)
    assert len(lines) == 1 + 3 * 5


def test_inspect_reports_bad_data_clearly(tmp_path: Path) -> None:
    result = run_python("tools/inspect_data.py", "--config=configs/tiny.py", "--step", "0",
                        f"--config.data.paths={tmp_path / 'missing.npy'}")
    assert result.returncode == 1
    assert re.search(r"error: Token file .*missing\.npy does not exist", result.stderr)


def test_bench_reports_what_it_measured() -> None:
    result = run_python("tools/bench_data.py", "--config=configs/tiny.py", "--mb", "2", "--files", "2",
                        "--batches", "5", "--warmup", "1", "--repeats", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["batch_shape"] == [2, 8, 128] and report["files"] == 2 and report["repeats"] == 2
    assert report["instances"] == 2 * (2 * 2**20 // 2 // 2 // 128)
    assert 0 < report["tokens_per_second_min"] <= report["tokens_per_second_median"] <= report["tokens_per_second_max"]
