"""Per-device memory of the parameters and optimizer state of a config at several FSDP sizes.

    python tools/memory_table.py [--config=configs/1b.py] [--fsdp 1 2 4 8 16] [--config.key=value ...]

Computed from the real shardings (olmo_jax.parallel.mesh's rules applied to the train state's shapes from
jax.eval_shape, on an abstract mesh: no devices or memory needed). Activations, gradients and XLA's temporaries come
on top; see tools/benchmark.py for whole-step figures.
"""

from __future__ import annotations

import math
import sys

import jax
from jax.sharding import AbstractMesh, AxisType

from olmo_jax import cli
from olmo_jax.config import load_config
from olmo_jax.parallel.mesh import tree_shardings
from olmo_jax.train.optim import make_optimizer
from olmo_jax.train.step import init_state


def per_device_bytes(abstract: object, fsdp: int) -> int:
    """Bytes one device holds of `abstract` (a tree of ShapeDtypeStructs) when split over `fsdp` devices."""
    mesh = AbstractMesh((1, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    shardings = tree_shardings(mesh, abstract)
    sizes = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize, abstract, shardings)
    return sum(jax.tree.leaves(sizes))


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/memory_table.py", description=__doc__, takes_config=True,
                                config_default="configs/1b.py")
    parser.add_argument("--fsdp", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    return parser


def run(argv: list[str] | None = None) -> int:
    p = parser()
    args, overrides = p.parse_with_overrides(argv)
    if min(args.fsdp) < 1:
        p.error(f"--fsdp sizes must be at least 1 (got {args.fsdp})")
    config = load_config(args.config, overrides)
    optimizer = make_optimizer(config.optimizer, config.scheduler, config.max_duration, config.max_grad_norm)
    state = jax.eval_shape(lambda k: init_state(config.model, optimizer, k), jax.random.key(0))
    print(f"{args.config}: {config.model.num_params():,} parameters (fp32 master weights, fp32 Adam moments)\n")
    print("| fsdp | parameters / device | optimizer state / device | total / device |")
    print("|---:|---:|---:|---:|")
    for fsdp in args.fsdp:
        params, opt = per_device_bytes(state.params, fsdp), per_device_bytes(state.opt_state, fsdp)
        print(f"| {fsdp} | {params / 2**30:.2f} GiB | {opt / 2**30:.2f} GiB | {(params + opt) / 2**30:.2f} GiB |")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
