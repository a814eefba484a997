"""Runs trainings on simulated CPU devices for tests/test_sharding.py (a subprocess: the device count is fixed when
JAX starts). Usage: python tests/multidevice.py RESULT_JSON TOKENS RUN_ROOT [override ...] -- one run per `--`-separated
group of overrides. For each run it records the per-device parameter bytes of the initial state."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

from olmo_jax.config import load_config
from olmo_jax.parallel.mesh import make_mesh
from olmo_jax.train.trainer import make_step, train

MICRO = Path(__file__).parent / "configs" / "micro.py"


def main(result: str, tokens: str, *groups: str) -> None:
    runs = [g.split() for g in " ".join(groups).split("--")]
    out = []
    for overrides in runs:
        config = load_config(MICRO, [f"data.paths={tokens}", *overrides])
        state = make_step(config, make_mesh(config.mesh)).init(jax.random.key(0))  # the step's factory alone
        leaves = jax.tree.leaves(state.params)
        per_device = sum(x.addressable_shards[0].data.nbytes for x in leaves)
        total = sum(x.nbytes for x in leaves)
        del state
        train(config)
        out.append({"overrides": overrides, "param_bytes_per_device": per_device, "param_bytes": total,
                    "devices": jax.device_count()})
    Path(result).write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
