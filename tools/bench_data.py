"""Throughput of ready training batches: tokens per second delivered by the prefetching loader.

    python tools/bench_data.py [--config=configs/1b.py] [--paths FILE ...] [--mb 400] [--json] [--config.key=value ...]

Uses the config's batch shape (1B: 64 instances × 2048 tokens, 8 micro-steps of 8, one device). Without --paths it
writes random token files of --mb megabytes in a temporary directory. Files are read once first so the page cache is
warm; then each repeat starts a Prefetcher at a fresh step, skips --warmup batches, and times --batches batches as
fast as the consumer can take them. Prints the median over repeats (and the slowest and fastest).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from olmo_jax import cli
from olmo_jax.config import load_config
from olmo_jax.data.order import Batches
from olmo_jax.data.token_files import TokenFiles


def write_random_files(directory: str, megabytes: int, files: int, vocab_size: int, dtype: str) -> list[str]:
    rng = np.random.default_rng(0)
    itemsize = np.dtype(dtype).itemsize
    per_file = megabytes * 2**20 // itemsize // files
    paths = []
    for f in range(files):
        path = os.path.join(directory, f"part-{f:03d}.npy")
        with open(path, "wb") as out:
            for start in range(0, per_file, 2**24):  # 16M tokens at a time: memory stays flat
                out.write(rng.integers(0, vocab_size, min(2**24, per_file - start), dtype=dtype).tobytes())
        paths.append(path)
    return paths


def warm_page_cache(paths: list[str]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def measure(batches: Batches, repeats: int, warmup: int, timed: int, depth: int) -> list[float]:
    """Tokens per second of each repeat."""
    tokens = batches.global_batch_size * batches.files.seq_len // batches.process_count
    rates, step = [], 0
    for _ in range(repeats):
        with batches.prefetch(step, step + warmup + timed, depth) as it:
            for _ in range(warmup):
                next(it)
            start = time.perf_counter()
            for _ in it:
                pass
            rates.append(timed * tokens / (time.perf_counter() - start))
        step += warmup + timed
    return rates


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/bench_data.py", description=__doc__, takes_config=True,
                                config_default="configs/1b.py")
    parser.add_argument("--paths", nargs="+", help="token files to read (default: random files in a temp dir)")
    parser.add_argument("--mb", type=int, default=400, help="size of the generated files in MiB")
    parser.add_argument("--files", type=int, default=4, help="number of generated files")
    parser.add_argument("--batches", type=int, default=300, help="timed batches per repeat")
    parser.add_argument("--warmup", type=int, default=20, help="batches skipped before timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, help="prefetch depth (default: data.prefetch_depth)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, overrides = parser().parse_with_overrides(argv)
    config = load_config(args.config, overrides)
    m, G = config.model, config.global_train_batch_size
    A = G // config.device_train_microbatch_size
    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
        paths = args.paths or write_random_files(tmp, args.mb, args.files, m.vocab_size, config.data.memmap_dtype)
        warm_page_cache(paths)
        files = TokenFiles(paths, config.data.memmap_dtype, m.max_sequence_length,
                           remote=config.data.remote_options())
        batches = Batches(files, config.data_seed, G, A, vocab_size=m.vocab_size)
        rates = measure(batches, args.repeats, args.warmup, args.batches, args.depth or config.data.prefetch_depth)
    result = {
        "tokens_per_second_median": statistics.median(rates), "tokens_per_second_min": min(rates),
        "tokens_per_second_max": max(rates), "batch_shape": [A, G // A, m.max_sequence_length],
        "instances": files.num_instances, "bytes": sum(files.sizes), "files": len(paths),
        "timed_batches": args.batches, "repeats": args.repeats, "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['tokens_per_second_median'] / 1e6:.1f}M tokens/s median over {args.repeats} × "
              f"{args.batches} batches of {result['batch_shape']} (min {min(rates) / 1e6:.1f}M, max "
              f"{max(rates) / 1e6:.1f}M); {len(paths)} file(s), {sum(files.sizes) / 2**20:.0f} MiB, "
              f"{os.cpu_count()} CPUs")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
