"""Cost of the checkpoint checksums (olmo_jax/train/checksum.py) on a config's train state.

    python tools/bench_checksum.py [--config=configs/1b.py] [--gib 2] [--repeats 5] [--json] [--config.key=value ...]

A save computes the checksums of the state it writes and a restore recomputes them of the state it read, so each
pays one pass of this. The state's arrays (parameters and optimizer state, their real shapes from
jax.eval_shape) are made on the default device, as many of them, in order, as fit in --gib GiB (the whole state
when it fits; OLMo-1B's is about 14 GB); the checksums of those are timed (compilation excluded, median of
--repeats, block_until_ready through the 8 bytes per array that reach the host), and the time for the whole state is
scaled from the bytes per second measured.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from olmo_jax import cli
from olmo_jax.config import load_config
from olmo_jax.train.checksum import checksums
from olmo_jax.train.optim import make_optimizer
from olmo_jax.train.step import init_state


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/bench_checksum.py", description=__doc__, takes_config=True,
                                config_default="configs/1b.py")
    parser.add_argument("--gib", type=float, default=2.0, help="at most this much state is made and timed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return parser


def made_leaves(abstract: object, budget: int) -> tuple[list[jax.Array], int]:
    """Arrays of the abstract tree's shapes and dtypes, in order, while their bytes fit in `budget` (at least one)."""
    leaves, used = [], 0
    key = jax.random.key(0)
    for leaf in jax.tree.leaves(abstract):
        size = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
        if leaves and used + size > budget:
            break
        key, sub = jax.random.split(key)
        leaves.append(jax.random.normal(sub, leaf.shape, jnp.float32).astype(leaf.dtype)
                      if jnp.issubdtype(leaf.dtype, jnp.floating) else jnp.zeros(leaf.shape, leaf.dtype))
        used += size
    return leaves, used


def run(argv: list[str] | None = None) -> int:
    p = parser()
    args, overrides = p.parse_with_overrides(argv)
    if args.gib <= 0 or args.repeats < 1:
        p.error(f"--gib must be positive and --repeats at least 1 (got {args.gib}, {args.repeats})")
    config = load_config(args.config, overrides)
    optimizer = make_optimizer(config.optimizer, config.scheduler, config.max_duration, config.max_grad_norm)
    abstract = jax.eval_shape(lambda k: init_state(config.model, optimizer, k), jax.random.key(0))
    tree = {"params": abstract.params, "opt_state": abstract.opt_state}
    total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))
    leaves, used = made_leaves(tree, int(args.gib * 2**30))
    jax.block_until_ready(leaves)
    checksums(leaves)  # compile
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        checksums(leaves)  # returns host strings: the device work is done
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    figures = {
        "config": args.config, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "state_bytes": total, "timed_bytes": used, "timed_arrays": len(leaves),
        "median_s": median, "min_s": min(times), "max_s": max(times),
        "gb_per_s": used / median / 1e9, "whole_state_s": total / (used / median),
        "load_1m": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{args.config}: train state {total / 1e9:.2f} GB; timed {len(leaves)} arrays, {used / 1e9:.2f} GB, on "
          f"{figures['device']} (load {figures['load_1m']:.1f})")
    print(f"  checksums: median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f}, {args.repeats} repeats) = "
          f"{figures['gb_per_s']:.2f} GB/s")
    print(f"  whole state: {figures['whole_state_s']:.2f} s per save and again per restore"
          f"{' (scaled from the bytes per second)' if used < total else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
