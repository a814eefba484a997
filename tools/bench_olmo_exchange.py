"""Time and peak memory of moving a config's full train state to OLMo's format and back.

    python tools/bench_olmo_exchange.py --workdir /tmp/exchange [--config=configs/1b.py] [--json] [--config.k=v ...]

A random state of the config's real shapes (weights and both Adam moments, fp32: about 14 GB for OLMo-1B) is saved
as an olmo_jax checkpoint at step 1000 under --workdir (which must not exist: the tool writes about three copies of
the state there), then exported with tools/convert_to_olmo.py and imported back with tools/convert_from_olmo.py, each
in its own process, whose wall time and peak resident memory (ru_maxrss) are measured. The round trip is checked:
the imported checkpoint's checksums equal the original's, array for array. Needs PyTorch.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from olmo_jax import cli
from olmo_jax.config import load_config
from olmo_jax.errors import UsageError
from olmo_jax.model.transformer import init_params
from olmo_jax.train.checkpoint import Checkpointer, package_versions
from olmo_jax.train.optim import OPT_STATE_LAYOUT, adam_moments, lr_schedule, make_optimizer, with_adam_moments

ROOT = Path(__file__).resolve().parents[1]
STEP = 1000


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/bench_olmo_exchange.py", description=__doc__, takes_config=True,
                                config_default="configs/1b.py")
    parser.add_argument("--workdir", required=True, help="a new folder for the checkpoints (several times the state)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    return parser


def random_checkpoint(config_path: str, overrides: list[str], run_dir: Path) -> int:
    """Save a random state of the config's shapes as an olmo_jax checkpoint at STEP; returns its bytes."""
    config = load_config(config_path, [*overrides, f"save_folder={run_dir}"])
    optimizer = make_optimizer(config.optimizer, config.scheduler, config.max_duration, config.max_grad_norm)
    params = init_params(config.model, jax.random.key(0))
    abstract = jax.eval_shape(optimizer.init, params)
    like, _, _ = adam_moments(abstract)

    @jax.jit
    def moments(key: jax.Array) -> tuple[object, object]:  # made on the device: no zero moments first
        keys = iter(jax.random.split(key, 2 * len(jax.tree.leaves(like))))
        mu = jax.tree.map(lambda x: 1e-3 * jax.random.normal(next(keys), x.shape, x.dtype), like)
        nu = jax.tree.map(lambda x: 1e-6 * jax.random.uniform(next(keys), x.shape, x.dtype), like)
        return mu, nu

    mu, nu = moments(jax.random.key(1))
    schedule = lr_schedule(config.scheduler, config.optimizer.learning_rate, config.max_duration)
    opt_state = with_adam_moments(abstract, mu, nu, STEP, schedule)
    meta = {"step": STEP, "model": config.model, "config": config.to_dict(), "opt_state_layout": OPT_STATE_LAYOUT,
            "versions": package_versions()}
    writer = Checkpointer(run_dir / "checkpoints", async_save=False)
    writer.save(STEP, params, meta, opt_state)
    writer.close()
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((params, mu, nu)))


def measured(*args: str) -> dict[str, float]:
    """Run `python *args` from the repository root; its wall time and peak RSS."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise UsageError(f"{' '.join(args)} failed: {err.strip().splitlines()[-1] if err.strip() else status}")
    return {"s": seconds, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "output": out.strip()}


def run(argv: list[str] | None = None) -> int:
    args, overrides = parser().parse_with_overrides(argv)
    work = Path(args.workdir)
    if work.exists():
        raise UsageError(f"--workdir {work} exists; give a new folder (the tool writes several copies of the state).")
    state_bytes = random_checkpoint(args.config, overrides, work / "jax")
    export = measured("tools/convert_to_olmo.py", "--checkpoint", str(work / "jax"), "--output", str(work / "olmo"))
    olmo_dir = work / "olmo" / f"step{STEP}-unsharded"
    imported = measured("tools/convert_from_olmo.py", "--checkpoint", str(olmo_dir), "--output", str(work / "back"))
    sums = [Checkpointer(work / d / "checkpoints", read_only=True).meta(STEP)["checksums"] for d in ("jax", "back")]
    figures = {
        "config": args.config, "state_gb": state_bytes / 1e9,
        "olmo_files_gb": sum(f.stat().st_size for f in olmo_dir.iterdir()) / 1e9,
        "export_s": export["s"], "export_peak_rss_gb": export["peak_rss_gb"],
        "import_s": imported["s"], "import_peak_rss_gb": imported["peak_rss_gb"],
        "round_trip_exact": sums[0] == sums[1], "load_1m": os.getloadavg()[0],
        "own_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
        "numpy": np.__version__,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{args.config}: state {figures['state_gb']:.2f} GB (weights + 2 Adam moments, fp32); OLMo files "
              f"{figures['olmo_files_gb']:.2f} GB; load {figures['load_1m']:.1f}")
        print(f"  export (tools/convert_to_olmo.py):   {export['s']:.1f} s, peak RSS {export['peak_rss_gb']:.1f} GB")
        print(f"  import (tools/convert_from_olmo.py): {imported['s']:.1f} s, peak RSS "
              f"{imported['peak_rss_gb']:.1f} GB")
        print(f"  round trip exact (checksums of every array): {figures['round_trip_exact']}")
    return 0 if figures["round_trip_exact"] else 1


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
