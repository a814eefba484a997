"""OLMo's optimizer as an optax chain: OLMo-style global-norm clipping, then AdamW with OLMo's decay groups and
learning-rate schedules (olmo_spec.md §4)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

SchedulerName = Literal["cosine_with_warmup", "linear_with_warmup", "constant"]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """OLMo's OptimizerConfig (adamw only); defaults are OLMo-1B's (§0, §4.1)."""

    name: Literal["adamw"] = "adamw"
    learning_rate: float = 4e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-5  # OLMo's default, not torch's 1e-8
    decay_norm_and_bias: bool = False
    decay_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.name != "adamw":
            raise ValueError(f"optimizer.name={self.name!r}: only 'adamw' is implemented (OLMo-1B's optimizer).")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ValueError(
                f"optimizer: learning_rate={self.learning_rate} must be > 0, weight_decay={self.weight_decay} "
                f"≥ 0 and eps={self.eps} > 0."
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optimizer.betas={self.betas} must be two numbers in [0, 1).")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """OLMo's SchedulerConfig (units: steps). `t_max` None means the run's `max_duration`."""

    name: SchedulerName = "cosine_with_warmup"
    t_warmup: int = 2000
    alpha_f: float = 0.1
    t_max: int | None = None
    warmup_min_lr: float | None = None  # None → 0.1 × peak (OLMo's `_linear_warmup`)

    def __post_init__(self) -> None:
        if self.name not in SchedulerName.__args__:
            raise ValueError(f"scheduler.name={self.name!r} must be one of {list(SchedulerName.__args__)}.")
        if self.t_warmup < 0 or not 0 <= self.alpha_f <= 1:
            raise ValueError(f"scheduler: t_warmup={self.t_warmup} must be ≥ 0 and alpha_f={self.alpha_f} in [0, 1].")
        if self.warmup_min_lr is not None and self.warmup_min_lr < 0:
            raise ValueError(f"scheduler.warmup_min_lr={self.warmup_min_lr} must be ≥ 0 (and below the peak LR).")


def olmo_lr(config: SchedulerConfig, peak: float, step: jax.Array | int, max_steps: int) -> jax.Array:
    """OLMo's `Scheduler.get_lr(peak, step, max_steps)`: the LR of the step-th optimizer update (step ≥ 1)."""
    step = jnp.asarray(step, jnp.float32)
    if config.name == "constant":
        return jnp.full_like(step, peak)
    t_max = config.t_max or max_steps
    warmup, eta_min = config.t_warmup, peak * config.alpha_f
    low = config.warmup_min_lr if config.warmup_min_lr is not None else 0.1 * peak
    warm = low + (peak - low) * jnp.minimum(step, warmup) / max(warmup, 1)
    frac = (step - warmup) / max(t_max - warmup, 1)
    if config.name == "cosine_with_warmup":
        decay = eta_min + (peak - eta_min) * (1 + jnp.cos(math.pi * frac)) / 2
    else:
        decay = peak - (peak - eta_min) * frac
    return jnp.where(step < warmup, warm, jnp.where(step >= t_max, eta_min, decay))


def lr_schedule(config: SchedulerConfig, peak: float, max_steps: int) -> optax.Schedule:
    """optax calls its schedule with count 0 for the first update; OLMo uses step 1 (§4.4)."""
    return lambda count: olmo_lr(config, peak, count + 1, max_steps)


def decay_mask(params: Any, config: OptimizerConfig) -> Any:
    """True where AdamW decays: every Linear kernel; embeddings only with decay_embeddings; norm scales and
    biases only with decay_norm_and_bias (OLMo's `get_param_groups`, §4.2)."""

    def decays(path: tuple[Any, ...], _: Any) -> bool:
        name = path[-1].key
        if name == "embedding":
            return config.decay_embeddings
        if name in ("bias", "scale"):
            return config.decay_norm_and_bias
        return True

    return jax.tree_util.tree_map_with_path(decays, params)


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over every array of a tree, accumulated in fp32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def clip_by_global_norm_olmo(max_norm: float) -> optax.GradientTransformation:
    """Multiply every gradient by min(1, max_norm / (‖g‖ + 1e-6)), as OLMo does (§4.3; optax's own clipping has no
    1e-6 and skips the multiply below the threshold)."""

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        coef = jnp.minimum(1.0, max_norm / (global_norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(
    optimizer: OptimizerConfig, scheduler: SchedulerConfig, max_steps: int, max_grad_norm: float | None
) -> optax.GradientTransformation:
    """Clip (if max_grad_norm), then torch-equivalent AdamW whose decay is scaled by the current LR (§4.1)."""
    adamw = optax.adamw(
        learning_rate=lr_schedule(scheduler, optimizer.learning_rate, max_steps),
        b1=optimizer.betas[0], b2=optimizer.betas[1], eps=optimizer.eps, eps_root=0.0,
        weight_decay=optimizer.weight_decay, mask=lambda p: decay_mask(p, optimizer),
    )
    if max_grad_norm is None:
        return adamw
    return optax.chain(clip_by_global_norm_olmo(max_grad_norm), adamw)
