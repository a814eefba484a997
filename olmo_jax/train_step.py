"""The train state and the pure `train_step(state, batch) -> (state, metrics)` that is jitted once.

Loss normalisation (olmo_spec.md §3.2): the loss is the true mean cross-entropy over the global batch's
B·(T−1) target tokens. That is what the 2024-02 OLMo code that trained the released OLMo-1B optimised (HEAD divides
by B·T instead, a constant 2047/2048 smaller) and what HF reports; with no masking it does not depend on how the
batch is split into microbatches or devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from olmo_jax.loss import next_token_loss_sums
from olmo_jax.model import ModelConfig, OLMo, init_params
from olmo_jax.optim import global_norm

Array = jax.Array
Z_LOSS_WEIGHT = 1e-4  # OLMo hard-wires the z-loss multiplier (§3.4); auxiliary_loss_multiplier is unused there


class TrainState(NamedTuple):
    step: Array  # int32 []: optimizer updates applied
    params: Any  # fp32 master weights
    opt_state: Any  # fp32 Adam moments and the update count
    healthy: Array  # bool []: False once a step saw a non-finite loss or grad norm; later steps then change nothing


def init_state(config: ModelConfig, optimizer: optax.GradientTransformation, key: Array) -> TrainState:
    params = init_params(config, key)
    return new_state(params, optimizer)


def new_state(params: Any, optimizer: optax.GradientTransformation, step: int = 0) -> TrainState:
    return TrainState(jnp.asarray(step, jnp.int32), params, optimizer.init(params), jnp.asarray(True))


def make_train_step(
    config: ModelConfig, optimizer: optax.GradientTransformation, schedule: optax.Schedule, loss_chunk: int,
    z_loss: bool,
) -> Callable[[TrainState, Array], tuple[TrainState, dict[str, Array]]]:
    """Bind the model and optimizer; the returned function has no Python branches on config.

    batch: int32 [A, M, T], A microbatches of M rows, accumulated inside the compiled step.
    """
    model = OLMo(config)
    z_weight = Z_LOSS_WEIGHT if z_loss else 0.0

    def loss_fn(params: Any, input_ids: Array, n_targets: int) -> tuple[Array, Any]:
        sums = next_token_loss_sums(model, params, input_ids, loss_chunk)
        return (sums.ce + z_weight * sums.z) / n_targets, sums

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Array) -> tuple[TrainState, dict[str, Array]]:
        a, m, t = batch.shape
        n_targets = a * m * (t - 1)

        def microbatch(carry: tuple[Any, Array, Array], input_ids: Array) -> tuple[tuple[Any, Array, Array], None]:
            grads, ce, z = carry
            g, sums = grad_fn(state.params, input_ids, n_targets)
            return (jax.tree.map(jnp.add, grads, g), ce + sums.ce, z + sums.z), None

        zero = jnp.zeros((), jnp.float32)
        init = (jax.tree.map(jnp.zeros_like, state.params), zero, zero)
        (grads, ce, z), _ = jax.lax.scan(microbatch, init, batch)
        loss, grad_norm = ce / n_targets, global_norm(grads)
        lr = schedule(state.step)  # the LR this step's update uses (optax counts from 0, olmo_lr from 1)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient leaves the state as it was, for this and every later step, so the loop can
        # stop on it (one step later, without a host sync per step) with the last good state intact.
        ok = state.healthy & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(ok, new, old)
        state = TrainState(
            keep(state.step + 1, state.step), jax.tree.map(keep, params, state.params),
            jax.tree.map(keep, opt_state, state.opt_state), ok,
        )
        metrics = {
            "train/loss": loss,
            "train/z_loss": Z_LOSS_WEIGHT * z / n_targets,
            "train/grad_norm": grad_norm,  # before clipping, as OLMo logs optim/total_grad_norm
            "train/lr": lr,
            "healthy": ok,  # a copy outside the donated state, for the loop's check (not logged)
        }
        return state, metrics

    return train_step
