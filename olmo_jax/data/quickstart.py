"""A training corpus that exists wherever Python does: the standard library's source, tokenized with the OLMo
tokenizer into OLMo token files, with every 20th file held out for evaluation.

configs/tiny.py sets `data.stdlib_corpus=True`: on the first run `python -m olmo_jax.train` builds the quickstart's
own files, `data/stdlib/train.npy` (training) and `data/stdlib/heldout.npy`, each only where no file exists: an
existing file is never replaced, and with other `data.paths` nothing is built at all (your data is yours). The
corpus's unigram entropy is the loss a model reaches by predicting token frequencies alone; a loss below it shows the
model uses context.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

from olmo_jax.data.prepare import prepare

TRAIN_PATH = Path("data/stdlib/train.npy")  # configs/tiny.py's data.paths: the only place the corpus is built
MAX_BYTES = 6_000_000  # ~1.8M tokens: a few epochs' worth for the tiny config, tokenized in seconds
HELD_OUT_EVERY = 20
_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "turtledemo", "lib2to3"}


def stdlib_sources(max_bytes: int = MAX_BYTES) -> list[Path]:
    """The first `max_bytes` of the standard library's .py files in sorted path order (deterministic for a given
    Python version), skipping test suites and installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if _SKIP & set(path.relative_to(root).parts) or not path.is_file():
            continue
        files.append(path)
        total += path.stat().st_size
        if total >= max_bytes:
            break
    return files


def heldout_path(train_path: str | Path) -> Path:
    return Path(train_path).with_name("heldout.npy")


def is_quickstart_path(path: str | Path) -> bool:
    """Whether `path` is the quickstart corpus's own training file (relative to the working directory)."""
    return Path(path).absolute() == TRAIN_PATH.absolute()


def ensure_stdlib_corpus(train_path: str | Path = TRAIN_PATH, tokenizer: str | None = None,
                         max_bytes: int = MAX_BYTES) -> list[Path]:
    """Build whichever of the training and held-out token files does not exist (an existing file is kept as it is);
    returns the files built."""
    train_path, held_path = Path(train_path), heldout_path(train_path)
    missing = [p for p in (held_path, train_path) if not p.exists()]
    if not missing:
        return []
    files = stdlib_sources(max_bytes)
    held = files[::HELD_OUT_EVERY]
    kept = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY]
    print(f"Building the quickstart corpus from {len(files)} standard-library files "
          f"({sum(f.stat().st_size for f in files) / 1e6:.1f} MB) into {train_path.parent}")
    # A handful of stdlib files are not UTF-8; their stray bytes become U+FFFD instead of failing the build.
    for inputs, output in ((held, held_path), (kept, train_path)):
        if output in missing:
            manifest = prepare(inputs, output, tokenizer, encoding_errors="replace")
            print(f"  {output}: {manifest['documents']:,} files, {manifest['tokens']:,} tokens")
    return missing


def unigram_entropy(path: str | Path, dtype: str = "uint16") -> float:
    """Entropy in nats of the token frequencies of a token file: the loss of the best context-free predictor."""
    counts = np.bincount(np.memmap(path, dtype=dtype, mode="r"))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
