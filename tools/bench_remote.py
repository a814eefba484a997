"""Throughput of ready training batches streamed from token files at URLs, beside the same files on local disk.

    python tools/bench_remote.py [--config=configs/1b.py] [--latencies 0 100] [--cache] [--json]
                                 [--config.key=value ...]

Writes random token files (--mb MiB in --files files) to a temporary directory and serves them from
tools/range_server.py in a separate process, on 127.0.0.1, adding each --latencies value (ms) to every request.
For the local files and for each latency it times ready batches through the real prefetcher at the config's batch
shape and data.prefetch_depth, as tools/bench_data.py does, with the config's data.remote_* settings. --cache adds,
per latency, reads through a data.cache_dir that an untimed first pass over the same steps filled (a later epoch or
a restarted run). Prints the median tokens/s over repeats, and the slowest and fastest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_data import measure, warm_page_cache, write_random_files

from olmo_jax import cli
from olmo_jax.config import TrainConfig, load_config
from olmo_jax.data.config import RemoteOptions
from olmo_jax.data.order import Batches
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.errors import OlmoJaxError


class ServerError(OlmoJaxError):
    """tools/range_server.py, the local server the benchmark reads from, did not start."""


class ServedDirectory:
    """tools/range_server.py over `root` with `latency_ms` per request, in a child process."""

    def __init__(self, root: str, latency_ms: float) -> None:
        server = Path(__file__).with_name("range_server.py")
        self.process = subprocess.Popen([sys.executable, str(server), root, "--port", "0", "--latency-ms",
                                         str(latency_ms)], stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("serving "):
            self.process.kill()
            raise ServerError(f"tools/range_server.py did not start (it printed {line!r}; its error is above).")
        self.url = line.split(" at ")[-1].strip()

    def __enter__(self) -> ServedDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def rates_of(files: TokenFiles, config: TrainConfig, args: argparse.Namespace, fill: bool = False) -> dict[str, float]:
    """measure()'s tokens/s; `fill` first reads every batch it will time (measure starts at step 0)."""
    m, G = config.model, config.global_train_batch_size
    batches = Batches(files, config.data_seed, G, G // config.device_train_microbatch_size, vocab_size=m.vocab_size)
    for step in range(args.repeats * (args.warmup + args.batches) if fill else 0):
        batches.batch_at(step)
    rates = measure(batches, args.repeats, args.warmup, args.batches, args.depth or config.data.prefetch_depth)
    return {"tokens_per_second_median": statistics.median(rates), "tokens_per_second_min": min(rates),
            "tokens_per_second_max": max(rates)}


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/bench_remote.py", description=__doc__, takes_config=True,
                                config_default="configs/1b.py")
    parser.add_argument("--latencies", type=float, nargs="+", default=[0.0, 100.0], help="added latency, ms")
    parser.add_argument("--cache", action="store_true", help="also time a cold and a warm data.cache_dir")
    parser.add_argument("--mb", type=int, default=200, help="size of the generated files in MiB")
    parser.add_argument("--files", type=int, default=4, help="number of generated files")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="batches skipped before timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, help="prefetch depth (default: data.prefetch_depth)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, overrides = parser().parse_with_overrides(argv)
    config = load_config(args.config, overrides)
    m, G = config.model, config.global_train_batch_size
    options = config.data.remote_options()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_remote-") as tmp:
        data = os.path.join(tmp, "data")
        os.mkdir(data)
        paths = write_random_files(data, args.mb, args.files, m.vocab_size, config.data.memmap_dtype)
        warm_page_cache(paths)  # the server reads them from memory too: the latency is the added one
        local = TokenFiles(paths, config.data.memmap_dtype, m.max_sequence_length, remote=options)
        results.append({"source": "local file", "latency_ms": None, "warm_cache": False}
                       | rates_of(local, config, args))
        for latency in args.latencies:
            with ServedDirectory(data, latency) as served:
                urls = [f"{served.url}/{os.path.basename(p)}" for p in paths]
                plans = [(False, options)]
                if args.cache:
                    cache_dir = os.path.join(tmp, f"cache-{latency:g}")
                    plans.append((True, dataclasses.replace(options, cache_dir=cache_dir)))
                for cache, remote in plans:
                    files = TokenFiles(urls, config.data.memmap_dtype, m.max_sequence_length, remote=remote)
                    results.append({"source": "http", "latency_ms": latency, "warm_cache": cache}
                                   | rates_of(files, config, args, fill=cache))
    report = {"batch_shape": [G // config.device_train_microbatch_size, config.device_train_microbatch_size,
                              m.max_sequence_length],
              "prefetch_depth": args.depth or config.data.prefetch_depth, "remote": _settings(options),
              "bytes": sum(local.sizes), "files": len(paths), "timed_batches": args.batches, "repeats": args.repeats,
              "cpus": os.cpu_count(), "results": results}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"ready batches of {report['batch_shape']} at prefetch depth {report['prefetch_depth']}, median of "
          f"{args.repeats} × {args.batches} batches; {len(paths)} files, {report['bytes'] / 2**20:.0f} MiB, "
          f"{os.cpu_count()} CPUs")
    print(f"{'source':<32} {'tokens/s':>10} {'min':>10} {'max':>10}")
    for r in results:
        name = r["source"] if r["latency_ms"] is None else f"http, +{r['latency_ms']:g} ms"
        name += ", warm cache" if r["warm_cache"] else ""
        print(f"{name:<32} {_m(r['tokens_per_second_median']):>10} {_m(r['tokens_per_second_min']):>10} "
              f"{_m(r['tokens_per_second_max']):>10}")
    return 0


def _m(rate: float) -> str:
    return f"{rate / 1e6:.2f}M"


def _settings(options: RemoteOptions) -> dict[str, object]:
    return {k: v for k, v in dataclasses.asdict(options).items() if k != "cache_dir"}


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
