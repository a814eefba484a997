"""Speed of the trainer's compiled step: tokens/s, step time, MFU, peak memory and compile time.

    python tools/benchmark.py --config=configs/1b.py [--config.key=value ...] [--steps 10] [--warmup 3] [--real]
                              [--json]
    python tools/benchmark.py --config=configs/1b.py --aot_only        # lower + compile only (abstract shapes)
    python tools/benchmark.py --config=configs/1b.py --memory_table [--microbatches 1 2 4 8 16]
                              [--remats none save_matmuls full] [--memory_gb 139] [--json]

The step is the one `olmo_jax.train` runs (olmo_jax.train.trainer.make_step: same shardings, donation,
accumulation, chunked loss), measured by olmo_jax.train.profiling at the config's batch: 1B is 64 × 2048 tokens per
step in microbatches of 8. It is compiled ahead of time, timed apart, then run --warmup untimed and --steps timed
steps on synthetic batches (uniform random token ids; --real reads the config's data.paths instead), each step waited
for with block_until_ready; the median step time is reported. MFU counts 6N + 12·L·d·s FLOPs per token against the
device kind's dense bf16 peak (A100 312, H100/H200 989 TFLOP/s); it is n/a where no peak is known (CPUs). Peak memory
is the allocator's peak_bytes_in_use (n/a on CPU); the compiled memory (XLA's buffer assignment: arguments,
temporaries...) is printed on every backend.

--aot_only lowers and compiles with abstract shapes, allocating nothing: the 1B step's compile time and memory on
any machine. --memory_table does that for each microbatch × remat policy (two micro-steps of accumulation each). Off
a GPU it asks XLA:CPU for its memory-optimising scheduler (--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED
unless XLA_FLAGS sets one): the default CPU schedule runs every recomputation early, so remat would save nothing
there, while XLA:GPU schedules for memory anyway. With --memory_gb (on a GPU: the device's limit by default) it also
names the largest microbatch of each policy whose compiled program fits.

On a GPU, the recommended XLA flags of olmo_jax/parallel/xla_flags.py are added to XLA_FLAGS unless already set there
(OLMO_JAX_XLA_FLAGS=0 adds none).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from olmo_jax import cli

GB = 1e9
MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/benchmark.py", description=__doc__, takes_config=True,
                                config_default="configs/1b.py")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    parser.add_argument("--real", action="store_true", help="batches from the config's data.paths, not synthetic")
    parser.add_argument("--aot_only", action="store_true", help="only lower + compile on abstract shapes")
    parser.add_argument("--memory_table", action="store_true", help="compiled memory per microbatch × remat policy")
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--remats", nargs="+", default=["none", "save_matmuls", "full"])
    parser.add_argument("--memory_gb", type=float, help="memory table: the device memory to fit (default: reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = parser()
    args, overrides = p.parse_with_overrides(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error(f"--steps={args.steps} must be ≥ 1 and --warmup={args.warmup} ≥ 0")
    return args, overrides


def gigabytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GB:.2f} GB"


def report(r: dict[str, Any]) -> str:
    lines = [
        f"model: {r['params']:,} params, {r['n_layers']} layers, d_model {r['d_model']}, seq {r['seq_len']}, "
        f"{r['compute_dtype']}, attention {r['attention_impl']}, remat {r['remat']}",
        f"batch: {r['global_batch']} × {r['seq_len']} = {r['tokens_per_step']:,} tokens/step (microbatch "
        f"{r['microbatch']} × accumulation {r['grad_accum']} × {r['devices']} × {r['device_kind']})",
        f"compile: lower {r['lower_seconds']:.1f} s + compile {r['compile_seconds']:.1f} s = "
        f"{r['lower_seconds'] + r['compile_seconds']:.1f} s (jax {r['jax_version']}, {r['backend']})",
    ]
    mem = r["compiled_memory"]
    if mem:
        lines.append(f"compiled memory per device: {gigabytes(mem['total_bytes'])} (arguments "
                     f"{gigabytes(mem['argument_bytes'])}, temporaries {gigabytes(mem['temp_bytes'])}, outputs "
                     f"{gigabytes(mem['output_bytes'])} of which {gigabytes(mem['alias_bytes'])} donated)")
    if "tokens_per_second" in r:
        mfu = (f"{100 * r['mfu']:.1f}% of {r['peak_flops_per_device'] / 1e12:.0f} TFLOP/s × {r['devices']}"
               if r["mfu"] is not None else f"n/a (no known peak for {r['device_kind']})")
        lines += [
            f"step time: median {r['step_time_median']:.4f} s (min {r['step_time_min']:.4f}, max "
            f"{r['step_time_max']:.4f}) over {r['timed_steps']} steps after {r['warmup_steps']} warm-up, "
            f"{r['data']} data, loss {r['loss']:.4f}",
            f"throughput: {r['tokens_per_second']:,.0f} tokens/s; MFU {mfu} ({r['flops_per_token']:.4g} FLOPs/token)",
            f"peak device memory: {gigabytes(r['peak_bytes_in_use'])}",
        ]
    return "\n".join(lines)


def largest_fitting(rows: list[dict[str, Any]], limit: float) -> dict[str, int | None]:
    """Per remat policy, the largest microbatch whose compiled program (arguments + temporaries) fits in `limit`."""
    out: dict[str, int | None] = {}
    for r in rows:
        fits = r["total_bytes"] <= limit
        out[r["remat"]] = max(out.get(r["remat"]) or 0, r["microbatch"] if fits else 0) or None
    return out


def table(rows: list[dict[str, Any]], limit: float | None) -> str:
    lines = ["| remat | microbatch | attention | arguments | temporaries | total | compile s |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['remat']} | {r['microbatch']} | {r['attention_impl']} | {gigabytes(r['argument_bytes'])} "
                     f"| {gigabytes(r['temp_bytes'])} | {gigabytes(r['total_bytes'])} | {r['compile_seconds']:.1f} |")
    if limit:
        best = largest_fitting(rows, limit)
        lines.append(f"\nLargest microbatch that fits in {gigabytes(limit)}: "
                     + ", ".join(f"{remat} {m if m else 'none of those tried'}" for remat, m in best.items()))
    return "\n".join(lines)


def device_memory_limit() -> int | None:
    """What the allocator may use on the first device (None on CPU)."""
    import jax

    return (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")


def run(argv: list[str] | None = None) -> int:
    args, overrides = parse(argv)
    from olmo_jax.parallel.xla_flags import apply_recommended_flags, gpu_expected, merge_flags

    added = apply_recommended_flags()  # before JAX starts its backend
    if args.memory_table and not gpu_expected():
        merged, more = merge_flags(os.environ.get("XLA_FLAGS", ""), MEMORY_SCHEDULER)
        os.environ["XLA_FLAGS"], added = merged, added + more
    from olmo_jax.config import load_config
    from olmo_jax.train.profiling import benchmark, memory_table

    config = load_config(args.config, overrides)
    if args.memory_table:
        rows = memory_table(config, args.microbatches, args.remats)
        limit = args.memory_gb * GB if args.memory_gb else device_memory_limit()
        fitting = largest_fitting(rows, limit) if limit else None
        print(json.dumps({"config": args.config, "overrides": overrides, "xla_flags": os.environ.get("XLA_FLAGS"),
                          "memory_limit_bytes": limit, "largest_fitting_microbatch": fitting, "rows": rows})
              if args.json else table(rows, limit))
        return 0
    result = benchmark(config, args.steps, args.warmup, real=args.real, aot_only=args.aot_only)
    result = {"config": args.config, "overrides": overrides, "xla_flags_added": added} | result
    print(json.dumps(result) if args.json else report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
