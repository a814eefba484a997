"""Causal attention alone on CPU: our query-blocked XLA attention against the generic XLA path and torch's SDPA.

    python tools/bench_attention.py [--batch 8 --seq_len 256 --heads 4 --head_dim 64] [--threads N --repeats 11]
                                    [--json]

Times the forward pass and the forward + backward pass (gradients of q, k and v) of causal self-attention on fp32
[batch, seq_len, heads, head_dim] inputs: `olmo_jax.model.attention.causal_attention(..., "xla")` (what the model
runs off a GPU), `jax.nn.dot_product_attention(..., is_causal=True, implementation="xla")` (what it ran before), and,
when torch is installed, `torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)` (what transformers'
OLMo runs on CPU). Median of --repeats calls after one untimed call (olmo_jax.train.profiling.median_seconds); JAX
calls are jitted and waited for with block_until_ready. The process is pinned to the first --threads CPUs (XLA sizes
its thread pool from them; torch.set_num_threads). The default shape is one layer of tools/bench_vs_torch.py's model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from olmo_jax import cli


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python tools/bench_attention.py", description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPUs to run on")
    parser.add_argument("--repeats", type=int, default=11, help="timed calls per measurement (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args, _ = parser.parse_with_overrides(argv)
    cpus = len(os.sched_getaffinity(0))
    if not 1 <= args.threads <= cpus:
        parser.error(f"--threads={args.threads} must be between 1 and the {cpus} CPUs this process may use")
    return args


def jax_timings(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    import jax
    import jax.numpy as jnp

    from olmo_jax.model.attention import causal_attention
    from olmo_jax.train.profiling import median_seconds

    shape = (args.batch, args.seq_len, args.heads, args.head_dim)
    q, k, v = (jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(0), 3))
    paths = {
        "ours (blocked XLA)": lambda q, k, v: causal_attention(q, k, v, "xla"),
        "jax generic XLA": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                                       implementation="xla"),
    }
    timings = {}
    for name, attend in paths.items():
        forward = jax.jit(attend)
        backward = jax.jit(jax.grad(lambda q, k, v, attend=attend: jnp.sum(attend(q, k, v) ** 2), argnums=(0, 1, 2)))
        timings[name] = {
            "forward_ms": 1e3 * median_seconds(lambda f=forward: jax.block_until_ready(f(q, k, v)), args.repeats),
            "forward_backward_ms": 1e3 * median_seconds(lambda b=backward: jax.block_until_ready(b(q, k, v)),
                                                        args.repeats),
        }
    return timings


def torch_timings(args: argparse.Namespace) -> dict[str, float] | None:
    try:
        import torch
    except ImportError:
        return None
    from olmo_jax.train.profiling import median_seconds

    torch.set_num_threads(args.threads)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    shape = (args.batch, args.heads, args.seq_len, args.head_dim)  # torch's layout: heads before time
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))

    def forward() -> None:
        with torch.no_grad():
            sdpa(q, k, v, is_causal=True)

    def forward_backward() -> None:
        for x in (q, k, v):
            x.grad = None
        (sdpa(q, k, v, is_causal=True) ** 2).sum().backward()

    return {"forward_ms": 1e3 * median_seconds(forward, args.repeats),
            "forward_backward_ms": 1e3 * median_seconds(forward_backward, args.repeats)}


def run(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])  # before XLA sizes its thread pool
    result: dict[str, Any] = {"shape": [args.batch, args.seq_len, args.heads, args.head_dim], "threads": args.threads,
                              "timings": jax_timings(args)}
    torch_result = torch_timings(args)
    if torch_result is not None:
        result["timings"]["torch SDPA"] = torch_result
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"causal attention, fp32 [batch {args.batch}, seq {args.seq_len}, {args.heads} heads × {args.head_dim}], "
          f"{args.threads} threads, median of {args.repeats}")
    for name, t in result["timings"].items():
        print(f"{name:>20}: forward {t['forward_ms']:7.2f} ms   forward + backward {t['forward_backward_ms']:7.2f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
