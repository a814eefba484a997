"""`python -m olmo_jax.train --config=configs/tiny.py [--config.key=value ...]`.

Until the training loop lands this builds the model from the config, prints its summary and runs a forward pass.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app
from ml_collections import config_flags

from olmo_jax.config import TrainConfig
from olmo_jax.model import OLMo, init_params

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Training config file.", lock_config=True)


def main(argv: list[str]) -> None:
    del argv
    config = TrainConfig.from_dict(_CONFIG.value)
    m = config.model
    print(f"{config.run_name}: {m.num_params():,} parameters, {m.n_layers} layers × d_model {m.d_model}, "
          f"{m.n_heads} heads, context {m.max_sequence_length}, {m.compute_dtype} on {jax.devices()}")
    params = init_params(m, jax.random.key(config.seed))
    ids = jnp.zeros((1, m.max_sequence_length), jnp.int32)
    start = time.perf_counter()
    logits = jax.jit(OLMo(m).apply)({"params": params}, ids).block_until_ready()
    print(f"forward pass: logits {logits.shape} {logits.dtype} in {time.perf_counter() - start:.2f}s")


if __name__ == "__main__":
    app.run(main)
