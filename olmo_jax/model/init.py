"""How OLMo initialises each weight (docs/olmo_facts.md §2): the standard deviation per weight kind and `init_fn`,
and the truncated normal it is drawn from."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from olmo_jax.model.config import ModelConfig

Array = jax.Array


def truncated_normal(std: float, cutoff: float | None) -> Callable[..., Array]:
    """N(0, std²), redrawn outside ±cutoff·std, without variance correction, as torch's trunc_normal_ (§2)."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        if cutoff is None:
            return std * jax.random.normal(key, shape, dtype)
        return std * jax.random.truncated_normal(key, -cutoff, cutoff, shape, dtype)

    return init


def init_stds(config: ModelConfig, layer_id: int) -> dict[str, float]:
    """Init std of each weight kind for block `layer_id` (0-based), per `init_fn` (§2.1-§2.3)."""
    d, f = config.d_model, config.mlp_inner
    if config.init_fn == "mitchell":
        return {
            "embed": config.emb_init_std or 1 / math.sqrt(d),
            "in_proj": 1 / math.sqrt(d),  # att_proj and ff_proj
            "o_proj": 1 / math.sqrt(2 * d * (layer_id + 1)),  # depth scaling uses the 1-based layer
            "down_proj": 1 / math.sqrt(2 * f * (layer_id + 1)),
            "lm_head": 1 / math.sqrt(d),
        }
    if config.init_fn == "normal":
        s = config.init_std
        return {"embed": config.emb_init_std or s, "in_proj": s, "o_proj": s, "down_proj": s, "lm_head": s}
    out = config.init_std / math.sqrt(2 * config.n_layers)  # full_megatron
    return {
        "embed": config.emb_init_std or config.init_std, "in_proj": config.init_std,
        "o_proj": out, "down_proj": out, "lm_head": 1 / math.sqrt(d),
    }


def init_cutoff(config: ModelConfig) -> float | None:
    """`normal` is untruncated unless a cutoff is set; the others truncate at ±3σ by default (§2)."""
    if config.init_fn == "normal":
        return config.init_cutoff_factor
    return config.init_cutoff_factor or 3.0
