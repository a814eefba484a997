"""A training corpus that exists wherever Python does: the standard library's source, tokenized with the OLMo
tokenizer into OLMo token files, with every 20th file held out for evaluation.

configs/tiny.py sets `data.stdlib_corpus=True`: on the first run the files at `data.paths[0]` (training) and the
sibling `heldout.npy` are built; later runs reuse them. The corpus's unigram entropy is the loss a model reaches by
predicting token frequencies alone; a loss below it shows the model uses context.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

from olmo_jax.data.prepare import prepare

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


def ensure_stdlib_corpus(train_path: str | Path, tokenizer: str | None = None, max_bytes: int = MAX_BYTES) -> bool:
    """Build the training and held-out token files unless they exist; returns whether it built them."""
    train_path, held_path = Path(train_path), heldout_path(train_path)
    if train_path.exists() and held_path.exists():
        return False
    files = stdlib_sources(max_bytes)
    held = files[::HELD_OUT_EVERY]
    kept = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY]
    print(f"Building the quickstart corpus from {len(files)} standard-library files "
          f"({sum(f.stat().st_size for f in files) / 1e6:.1f} MB) into {train_path.parent}")
    # A handful of stdlib files are not UTF-8; their stray bytes become U+FFFD instead of failing the build.
    for inputs, output in ((held, held_path), (kept, train_path)):
        manifest = prepare(inputs, output, tokenizer, encoding_errors="replace")
        print(f"  {output}: {manifest['documents']:,} files, {manifest['tokens']:,} tokens")
    return True


def unigram_entropy(path: str | Path, dtype: str = "uint16") -> float:
    """Entropy in nats of the token frequencies of a token file: the loss of the best context-free predictor."""
    counts = np.bincount(np.memmap(path, dtype=dtype, mode="r"))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
