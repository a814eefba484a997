"""The quickstart: the standard-library corpus is built, trained on and reported against its unigram entropy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from olmo_jax.config import load_config
from olmo_jax.data.quickstart import heldout_path, stdlib_sources, unigram_entropy
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.errors import DataError
from olmo_jax.train.metrics import read_metrics
from olmo_jax.train.trainer import train

pytestmark = [pytest.mark.slow, pytest.mark.network]


def test_stdlib_sources_are_deterministic_and_skip_tests() -> None:
    files = stdlib_sources(500_000)
    assert files == stdlib_sources(500_000) and files == sorted(files)
    assert not any("test" in p.parts or "site-packages" in p.parts for p in files)
    assert sum(f.stat().st_size for f in files) >= 500_000


def test_unigram_entropy(tmp_path: Path) -> None:
    np.array([1, 1, 2, 2], np.uint16).tofile(tmp_path / "a.npy")
    assert unigram_entropy(tmp_path / "a.npy") == pytest.approx(np.log(2))


def test_shortened_quickstart_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The command builds the corpus at its own path (train() itself never writes data), trains, and a resumed run
    evaluates."""
    from olmo_jax.train.__main__ import run

    monkeypatch.chdir(tmp_path)  # the quickstart's data/stdlib/ and runs/ are relative to the working directory
    train_path = Path("data/stdlib/train.npy")
    overrides = [f"--config.save_folder={tmp_path / 'run'}", "--config.max_duration=4", "--config.save_interval=2",
                 "--config.model.n_layers=1", "--config.model.d_model=64", "--config.console_log_interval=1"]
    config = load_config(ROOT / "configs/tiny.py", overrides)
    assert config.data.paths == (str(train_path),) and config.data.stdlib_corpus
    with pytest.raises(DataError, match=r"train\.npy does not exist"):
        train(config)
    assert not train_path.exists()
    assert run([f"--config={ROOT / 'configs' / 'tiny.py'}", *overrides, "--config.stop_at=2",
                "--config.evaluators=()"]) == 0
    out = capsys.readouterr().out
    assert "unigram entropy" in out and "Finished at step 2" in out
    # The tiny config's evaluators, on a few examples each, with the held-out set the command built.
    evaluators = tuple(dataclasses.replace(e, limit=4) for e in config.evaluators)
    assert {e.label for e in evaluators} >= {"hellaswag", "winogrande", "sciq", "copa", "arc_easy", "openbook_qa"}
    assert train(dataclasses.replace(config, evaluators=evaluators)) == 4
    assert "Finished at step 4" in capsys.readouterr().out
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert last["step"] == 4 and "eval/downstream/hellaswag_len_norm" in last and "eval/downstream/copa_acc" in last
    # After 4 steps the model is barely trained: perplexity of the order of the 50,304-row vocabulary.
    assert 5_000 < last["eval/stdlib_heldout/Perplexity"] < 4 * 50_304
    files = TokenFiles([train_path, heldout_path(train_path)], "uint16", 128)
    assert files.num_instances > 10_000  # ~1.8M tokens
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()) == [2, 4]


def test_the_quickstart_never_replaces_a_users_data(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """With configs/tiny.py and data.paths=mydir/train.npy (and no mydir/heldout.npy), the corpus builder used to
    overwrite the user's train.npy with standard-library tokens. Now it builds only at its own path, and only the
    files that do not exist there."""
    from olmo_jax.train.__main__ import build_quickstart_corpus

    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mydir" / "train.npy"
    mine.parent.mkdir()
    np.arange(5000, dtype=np.uint16).tofile(mine)
    before = mine.read_bytes()
    config = load_config(ROOT / "configs/tiny.py", [f"--config.data.paths={mine}"])
    build_quickstart_corpus(config)
    assert "nothing is built" in capsys.readouterr().out
    assert mine.read_bytes() == before and sorted(p.name for p in mine.parent.iterdir()) == ["train.npy"]
    own = Path("data/stdlib/train.npy")  # the quickstart's own path, with a file already there
    own.parent.mkdir(parents=True)
    np.arange(3000, dtype=np.uint16).tofile(own)
    kept = own.read_bytes()
    build_quickstart_corpus(load_config(ROOT / "configs/tiny.py"))
    assert own.read_bytes() == kept  # kept as it is; only the missing held-out file was built
    assert heldout_path(own).stat().st_size > 100_000
