"""OLMo-1B speed on one GPU in one call: microbatch × remat × attention, an XLA-flag A/B, then the best for longer.

Prepared for the H200 machine (Python 3.12, jax 0.11 with its CUDA plugin, flax and optax preinstalled, no
internet, no ml_collections). Fetch ml_collections here once, as a pure-Python wheel, into the git-ignored .whl/:

    pip download --no-deps ml_collections==1.1.0 -d .whl

then run from the repository root there, carrying .whl along (its dependencies absl-py and PyYAML come with orbax):

    pip install --no-deps --no-index .whl/ml_collections-*.whl
    PYTHONPATH=. python tools/gpu_sweep.py --out $OUT/sweep

Everything happens within --budget_s seconds of wall time (default 480: a 15-minute device allowance also pays for
the machine's start), in three phases, each in fresh worker processes:

1. grid: one process with the recommended XLA flags (olmo_jax/parallel/xla_flags.py) compiles each setting of GRID
   once, in that priority order, and times --steps steps after --warmup, at the recipe's global batch (64 × 2048
   tokens, accumulating microbatches inside the step), until 60% of the budget is spent. A setting whose compiled memory
   exceeds the device's is not run; an out-of-memory setting rules out larger microbatches of the same kind.
2. flags: the best grid setting again in one process per XLA flag set
   (olmo_jax.parallel.xla_flags.CANDIDATE_GPU_FLAGS, and no added flags at all), until 82% of the budget.
3. final: the best setting with the best flags for --final_steps timed steps, with the allocator's peak memory.

Each record is appended to DIR/sweep.jsonl as soon as it is measured, so a timeout loses nothing measured; at the end
DIR/sweep.json (records, best setting) and DIR/sweep.md (the tables, for the README) are written. Workers share a
persistent compilation cache, so the final phase does not compile again. XLA_PYTHON_CLIENT_MEM_FRACTION defaults
to 0.95 here (JAX preallocates 75% otherwise). This process never imports JAX: only the workers hold the GPU.

--attentions/--remats/--microbatches replace GRID by their product (how the CPU test runs this on configs/tiny.py).
--config.key=value overrides are passed on to the workers and applied to every setting (before the setting's own
model.attention_impl, model.remat, device_train_microbatch_size, global_train_batch_size and loss_chunk_size). Each
setting is measured by olmo_jax.train.profiling.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from olmo_jax import cli  # stdlib (and absl logging) only, no JAX
from olmo_jax.errors import ConfigError
from olmo_jax.parallel.xla_flags import CANDIDATE_GPU_FLAGS, RECOMMENDED_GPU_FLAGS, merge_flags  # stdlib only, no JAX

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Setting:
    attention: str  # model.attention_impl
    remat: str  # model.remat
    microbatch: int  # device_train_microbatch_size
    loss_chunk: int = 512  # loss_chunk_size

    def overrides(self, global_batch: int) -> list[str]:
        return [f"model.attention_impl={self.attention}", f"model.remat={self.remat}",
                f"device_train_microbatch_size={self.microbatch}", f"global_train_batch_size={global_batch}",
                f"loss_chunk_size={self.loss_chunk}"]


# Priority order: what most likely wins first, so that a short budget still measures it. OLMo-1B's state (fp32
# params, grads, Adam) takes ~19 GB; activations without remat are a few GB per 2048-token row.
GRID = [
    Setting("cudnn", "none", 8),  # the recipe's microbatch, nothing recomputed
    Setting("cudnn", "save_matmuls", 16),  # twice the rows, recomputing only cheap elementwise work
    Setting("cudnn", "none", 16),
    Setting("xla", "none", 8),  # attention A/B at the recipe's setting
    Setting("cudnn", "none", 8, 2048),  # the whole loss at once: no logits recomputed in the backward pass
    Setting("cudnn", "none", 4),
    Setting("cudnn", "save_matmuls", 32),
    Setting("cudnn", "full", 32),
    Setting("cudnn", "save_matmuls", 8),
    Setting("cudnn", "full", 16),
    Setting("xla", "save_matmuls", 16),
    Setting("cudnn", "none", 32),
    Setting("cudnn", "full", 64),
    Setting("xla", "full", 16),
]
GRID_SHARE, FLAGS_SHARE = 0.60, 0.82  # cumulative fractions of the budget at which phases 1 and 2 stop
FIRST_ESTIMATE_S = 60.0  # a setting's compile + steps before one has been measured
MEMORY_ERRORS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM")


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = cli.ArgumentParser(prog="python tools/gpu_sweep.py", description=__doc__, takes_config=True,
                                config_default=str(ROOT / "configs" / "1b.py"))
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "runs"), "gpu_sweep"))
    parser.add_argument("--global_batch", type=int, default=64, help="rows per step (the recipe's 64)")
    parser.add_argument("--budget_s", type=float, default=480.0, help="wall-clock seconds for all three phases")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per grid or flag setting")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--final_steps", type=int, default=20)
    parser.add_argument("--attentions", nargs="+", help="with --remats and --microbatches: a product grid")
    parser.add_argument("--remats", nargs="+")
    parser.add_argument("--microbatches", type=int, nargs="+")
    parser.add_argument("--flag_sets", nargs="*", default=["none", *CANDIDATE_GPU_FLAGS],
                        help=f"phase 2: 'none' and/or names in {list(CANDIDATE_GPU_FLAGS)}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON job description, set by this script
    args, overrides = parser.parse_with_overrides(argv)
    custom = (args.attentions, args.remats, args.microbatches)
    if any(custom) and not all(custom):
        parser.error("--attentions, --remats and --microbatches go together")
    unknown = set(args.flag_sets) - {"none", *CANDIDATE_GPU_FLAGS}
    if unknown:
        parser.error(f"--flag_sets: unknown {sorted(unknown)}; choose from {['none', *CANDIDATE_GPU_FLAGS]}")
    return args, overrides


# ------------------------------------------------------------------------------------------------ worker side


def run_worker(job: dict[str, Any]) -> None:
    """Compile and time each setting of the job in this process, appending one record per setting."""
    import jax

    from olmo_jax.config import load_config
    from olmo_jax.train.profiling import (
        compile_step,
        describe,
        peak_device_memory,
        synthetic_batches,
        throughput,
        time_steps,
    )

    base = {"phase": job["phase"], "flags": job["flags"], "xla_flags": os.environ.get("XLA_FLAGS", "")}

    def record(setting: Setting, status: str, **fields: Any) -> None:
        with open(job["records"], "a") as f:
            f.write(json.dumps(base | dataclasses.asdict(setting) | {"status": status} | fields) + "\n")

    device = jax.local_devices()[0]
    limit = (device.memory_stats() or {}).get("bytes_limit")
    estimate, timed, too_big, state = FIRST_ESTIMATE_S, 0, [], None
    for setting in (Setting(**s) for s in job["settings"]):
        if time.time() + estimate > job["deadline"]:
            record(setting, "skipped", message=f"budget: ~{estimate:.0f} s needed, "
                                                f"{max(job['deadline'] - time.time(), 0):.0f} s left")
            continue
        if any(setting.attention == s.attention and setting.remat == s.remat and setting.microbatch >= s.microbatch
               for s in too_big):
            record(setting, "skipped", message="a smaller microbatch of this kind ran out of memory")
            continue
        start = time.time()
        try:
            overrides = [*job["overrides"], *setting.overrides(job["global_batch"])]  # the setting's keys win
            step = compile_step(load_config(job["config"], overrides))
            info = describe(step)
            needed = info["compiled_memory"].get("total_bytes")
            if limit and needed and needed > limit:
                too_big.append(setting)
                record(setting, "OOM", message=f"compiled program needs {needed / 1e9:.1f} GB > the device's "
                                               f"{limit / 1e9:.1f} GB", **info)
                continue
            if state is None:  # every setting trains the same parameters: one state serves them all
                state = step.jitted.init(jax.random.key(0))
            state, times, metrics = time_steps(step, state, synthetic_batches(step, 2), job["warmup"], job["steps"])
            took = time.time() - start  # the slowest timed setting so far is the estimate for the next one
            estimate, timed = (took if timed == 0 else max(estimate, took)), timed + 1
            record(setting, "ok", **info, **throughput(step, times), loss=metrics["train/loss"],
                   peak_bytes_in_use=peak_device_memory(), seconds=took)
        except Exception as e:  # a measurement harness: any failure of one setting is recorded in the table; go on
            text = f"{type(e).__name__}: {e}"
            status = "OOM" if any(m in text for m in MEMORY_ERRORS) else "error"
            if status == "OOM":
                too_big.append(setting)
            record(setting, status, message=text.strip().splitlines()[0][:400])
            state = None  # a failed step may have consumed the donated state


# ------------------------------------------------------------------------------------------------ driver side


def run_phase(args: argparse.Namespace, overrides: list[str], phase: str, flags: str, xla_flags: str,
              settings: list[Setting], steps: int, deadline: float, records: Path, cache_dir: str) -> None:
    if time.time() >= deadline:
        print(f"[{phase}/{flags}] no time left in the budget; skipped", flush=True)
        return
    job = {"phase": phase, "flags": flags, "settings": [dataclasses.asdict(s) for s in settings],
           "config": args.config, "overrides": overrides, "global_batch": args.global_batch, "steps": steps,
           "warmup": args.warmup, "deadline": deadline, "records": str(records), "cache_dir": cache_dir}
    env = os.environ | {
        "XLA_FLAGS": xla_flags, "OLMO_JAX_XLA_FLAGS": "0",  # exactly these flags, nothing added
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        # JAX's persistent compilation cache, shared by the workers (environment variables: a name this JAX
        # version does not know is ignored rather than fatal).
        "JAX_COMPILATION_CACHE_DIR": cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    timeout = max(deadline - time.time(), 0) + 60  # a worker past its deadline is stopped; its records stay
    print(f"[{phase}/{flags}] {len(settings)} setting(s), XLA_FLAGS={xla_flags!r}, "
          f"{max(deadline - time.time(), 0):.0f} s", flush=True)
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env, timeout=timeout,
                              capture_output=True, text=True)
        if proc.returncode:
            print(f"[{phase}/{flags}] worker exited {proc.returncode}:\n{proc.stderr[-2000:]}", flush=True)
            with open(records, "a") as f:
                f.write(json.dumps({"phase": phase, "flags": flags, "status": "crashed", "xla_flags": xla_flags,
                                    "message": proc.stderr.strip().splitlines()[-1][:400] if proc.stderr else ""})
                        + "\n")
    except subprocess.TimeoutExpired:
        print(f"[{phase}/{flags}] worker stopped after {timeout:.0f} s", flush=True)


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def best(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in records if r["status"] == "ok"]
    return max(ok, key=lambda r: r["tokens_per_second"]) if ok else None


def setting_of(record: dict[str, Any]) -> Setting:
    return Setting(record["attention"], record["remat"], record["microbatch"], record["loss_chunk"])


def fmt(x: Any, spec: str) -> str:
    return "–" if x is None else format(x, spec)


def percent(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown(records: list[dict[str, Any]], winner: dict[str, Any] | None) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    head = ok[0] if ok else {}
    lines = [f"# Train-step sweep on {head.get('devices', '?')} × {head.get('device_kind', '?')} "
             f"(jax {head.get('jax_version', '?')})", ""]
    if head:
        lines += [f"{head['params']:,} parameters, seq {head['seq_len']}, {head['compute_dtype']} compute, global "
                  f"batch {head['global_batch']} ({head['tokens_per_step']:,} tokens/step), synthetic tokens. "
                  f"MFU = tokens/s × {head['flops_per_token']:.4g} FLOPs/token / "
                  f"{fmt(head['peak_flops_per_device'], '.3g')} FLOP/s.", ""]
    columns = ("| phase | flags | attention | remat | microbatch | loss chunk | compile s | step s | tokens/s | MFU "
               "| compiled GB | status |")
    lines += [columns, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        if r["status"] == "crashed":
            lines.append(f"| {r['phase']} | {r['flags']} | | | | | | | | | | crashed: {r.get('message', '')} |")
            continue
        compile_s = (r["lower_seconds"] + r["compile_seconds"]) if "compile_seconds" in r else None
        memory = r.get("compiled_memory", {}).get("total_bytes")
        status = r["status"] + (f": {r['message']}" if r.get("message") else "")
        lines.append(
            f"| {r['phase']} | {r['flags']} | {r['attention']} | {r['remat']} | {r['microbatch']} | "
            f"{r['loss_chunk']} | {fmt(compile_s, '.1f')} | {fmt(r.get('step_time_median'), '.3f')} | "
            f"{fmt(r.get('tokens_per_second'), ',.0f')} | {percent(r.get('mfu'))} | "
            f"{fmt(memory / 1e9 if memory else None, '.1f')} | {status} |")
    if winner:
        lines += ["", f"Best: attention {winner['attention']}, remat {winner['remat']}, microbatch "
                      f"{winner['microbatch']}, loss chunk {winner['loss_chunk']}, flags {winner['flags']} "
                      f"(XLA_FLAGS={winner['xla_flags']!r}): {winner['tokens_per_second']:,.0f} tokens/s, MFU "
                      f"{percent(winner.get('mfu'))}, median step "
                      f"{winner['step_time_median']:.3f} s over {winner['timed_steps']} steps (min "
                      f"{winner['step_time_min']:.3f}, max {winner['step_time_max']:.3f}), peak memory "
                      f"{fmt(winner['peak_bytes_in_use'] / 1e9 if winner.get('peak_bytes_in_use') else None, '.1f')}"
                      " GB. (A final-phase compile time is a load from the persistent compilation cache.)"]
    return "\n".join(lines) + "\n"


def flag_string(name: str) -> str:
    """XLA_FLAGS for a flag set: 'none' is the user's XLA_FLAGS alone, 'recommended' adds RECOMMENDED_GPU_FLAGS, a
    candidate's name adds its flags to those (a flag the user set is never overridden)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if name == "none":
        return flags
    flags, _ = merge_flags(flags, RECOMMENDED_GPU_FLAGS)
    return merge_flags(flags, CANDIDATE_GPU_FLAGS[name])[0] if name != "recommended" else flags


def run(argv: list[str] | None = None) -> int:
    args, overrides = parse(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    if importlib.util.find_spec("ml_collections") is None:
        raise ConfigError("ml_collections is not installed. On a machine without internet: pip download --no-deps "
                          "ml_collections==1.1.0 -d .whl (elsewhere), then pip install --no-deps --no-index "
                          ".whl/ml_collections-*.whl")
    if args.attentions:
        grid = [Setting(a, r, m) for a, r, m in itertools.product(args.attentions, args.remats, args.microbatches)]
    else:
        grid = GRID
    grid = [s for s in grid if args.global_batch % s.microbatch == 0]
    from olmo_jax.config import load_config  # ml_collections, no JAX: this process still never imports it

    # A mistyped --config.key=value fails here, once, rather than in every setting of every phase.
    load_config(args.config, [*overrides, *(grid[0].overrides(args.global_batch) if grid else [])])
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "sweep.jsonl"
    records_path.unlink(missing_ok=True)
    cache_dir = tempfile.mkdtemp(prefix="olmo_jax_sweep_cache-")
    recommended = flag_string("recommended")
    run_phase(args, overrides, "grid", "recommended", recommended, grid, args.steps,
              start + GRID_SHARE * args.budget_s, records_path, cache_dir)
    winner = best(read_records(records_path))
    if winner is None:
        print("No grid setting ran; see sweep.jsonl.", flush=True)
    else:
        for name in args.flag_sets:
            run_phase(args, overrides, "flags", name, flag_string(name), [setting_of(winner)], args.steps,
                      start + FLAGS_SHARE * args.budget_s, records_path, cache_dir)
        winner = best(read_records(records_path))
        run_phase(args, overrides, "final", winner["flags"], winner["xla_flags"], [setting_of(winner)],
                  args.final_steps, start + args.budget_s, records_path, cache_dir)
    records = read_records(records_path)
    final = [r for r in records if r["phase"] == "final" and r["status"] == "ok"]
    result = {"records": records, "best": final[0] if final else best(records), "budget_s": args.budget_s,
              "wall_s": time.time() - start}
    (out / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "sweep.md").write_text(markdown(records, result["best"]))
    print((out / "sweep.md").read_text(), flush=True)
    return 0 if result["best"] else 1


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
