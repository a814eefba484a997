"""The train state, the pure `train_step(state, batch) -> (state, metrics)`, and that step jitted for a mesh.

Loss normalisation (docs/olmo_facts.md §3.2): the loss is the true mean cross-entropy over the global batch's
B·(T−1) target tokens. That is what the 2024-02 OLMo code that trained the released OLMo-1B optimised (HEAD divides
by B·T instead, a constant 2047/2048 smaller) and what HF reports; with no masking it does not depend on how the
batch is split into microbatches or devices.

Everything here takes the fields it needs (the architecture, the run options, the optimizer, two loss settings and
the mesh), not a run's whole config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from olmo_jax.model.attention import attention_impl
from olmo_jax.model.config import ModelConfig, RunOptions
from olmo_jax.model.transformer import OLMo, init_params
from olmo_jax.parallel.mesh import batch_sharding, tree_shardings, with_shardings
from olmo_jax.train.loss import next_token_loss_sums
from olmo_jax.train.optim import applied_lr, global_norm

Array = jax.Array
Z_LOSS_WEIGHT = 1e-4  # OLMo hard-wires the z-loss multiplier (§3.4); auxiliary_loss_multiplier is unused there


class TrainState(NamedTuple):
    step: Array  # int32 []: optimizer updates applied
    params: Any  # fp32 master weights
    opt_state: Any  # fp32 Adam moments, the update count and the LR last applied (olmo_jax/train/optim.py)
    healthy: Array  # bool []: False once a step saw a non-finite loss or grad norm; later steps then change nothing


def init_state(config: ModelConfig, optimizer: optax.GradientTransformation, key: Array) -> TrainState:
    params = init_params(config, key)
    return new_state(params, optimizer)


def new_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """Step 0 with a fresh optimizer: the step and the optimizer's update count (which the LR follows) agree."""
    return TrainState(jnp.asarray(0, jnp.int32), params, optimizer.init(params), jnp.asarray(True))


def make_train_step(
    model: OLMo, optimizer: optax.GradientTransformation, loss_chunk: int, z_loss: bool,
) -> Callable[[TrainState, Array], tuple[TrainState, dict[str, Array]]]:
    """Bind the model (with its run options) and the optimizer; the returned function has no Python branches on
    config.

    batch: int32 [A, M, T], A microbatches of M rows, accumulated inside the compiled step.
    """
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
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # A non-finite loss or gradient leaves the state as it was, for this and every later step, so the loop can
        # stop on it (one step later, without waiting for each step) with the last good state intact.
        ok = state.healthy & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updated = TrainState(state.step + 1, params, opt_state, ok)
        state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), updated, state._replace(healthy=ok))
        metrics = {
            "train/loss": loss,
            "train/z_loss": Z_LOSS_WEIGHT * z / n_targets,
            "train/grad_norm": grad_norm,  # before clipping, as OLMo logs optim/total_grad_norm
            "train/lr": applied_lr(opt_state),  # the LR this update used, from the optimizer's own state
            "healthy": ok,  # a copy outside the donated state, for the loop's check (not logged)
        }
        return state, metrics

    return train_step


class JittedStep(NamedTuple):
    """The train step as every entry point runs it (the trainer, tools/benchmark.py): bound, sharded, donated."""

    train_step: Any  # jax.jit(train_step): (TrainState, int32 [A, M·devices, T]) → (TrainState, metrics)
    init: Any  # jax.jit: PRNG key → a fresh TrainState laid out on the mesh
    optimizer: optax.GradientTransformation
    abstract_state: TrainState  # ShapeDtypeStructs carrying the state's shardings (restore and AOT targets)
    state_shardings: Any
    batch_sharding: NamedSharding


def jit_train_step(config: ModelConfig, options: RunOptions, optimizer: optax.GradientTransformation,
                   loss_chunk: int, z_loss: bool, mesh: Mesh) -> JittedStep:
    """Bind the model and optimizer and jit the step for `mesh` (FSDP state, batch split over devices, state
    donated). The attention implementation is checked here, before tracing, so that a bad choice is one
    ConfigError rather than an error deep inside the trace."""
    attention_impl(options)
    abstract = jax.eval_shape(lambda k: init_state(config, optimizer, k), jax.random.key(0))
    state_shardings = tree_shardings(mesh, abstract)
    batch = batch_sharding(mesh)
    step_fn = make_train_step(OLMo(config, options), optimizer, loss_chunk, z_loss)
    train_step = jax.jit(step_fn, in_shardings=(state_shardings, batch), out_shardings=(state_shardings, None),
                         donate_argnums=0)
    init = jax.jit(lambda k: init_state(config, optimizer, k), out_shardings=state_shardings)
    return JittedStep(train_step, init, optimizer, with_shardings(abstract, state_shardings), state_shardings, batch)
