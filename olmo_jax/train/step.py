"""The train state, the pure `train_step(state, batch) -> (state, metrics)`, and that step jitted for a mesh.

Loss normalisation (docs/olmo_facts.md §3.2): by default the loss is the true mean cross-entropy over the global
batch's B·(T−1) target tokens. That is what the 2024-02 OLMo code that trained the released OLMo-1B optimised
(ai2-olmo ≤ 0.3.0) and what HF reports. `per_token` divides the same sum by B·T instead, as ai2-olmo ≥ 0.4.0 does (a
constant (T−1)/T smaller: 2047/2048 at T = 2048), for continuing runs of those versions with their losses
(config key `loss_normalization`). Either way, with no masking, the loss does not depend on how the batch is split
into microbatches or devices.

The optional loss-spike guard (`SpikeGuard`, in the spirit of OLMo-core's SkipStepAdamW): a step whose loss is far
above the recent ones, or whose gradient norm is exactly 0, applies no update; the batch is consumed all the same.
After `max_skips` such steps in a row the state is frozen and marked unhealthy, so the loop stops before anything
checkpoints it. Its history of recent losses lives in the train state and starts afresh after a resume.

Everything here takes the fields it needs (the architecture, the run options, the optimizer, the loss settings,
the guard and the mesh), not a run's whole config.
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


class SpikeGuard(NamedTuple):
    """The loss-spike guard's settings (SpikeGuardConfig in a run's config)."""

    window: int
    sigma: float
    max_skips: int


class GuardState(NamedTuple):
    recent: Array  # float32 [window]: the losses of the last steps that applied their update, a ring
    seen: Array  # int32 []: losses recorded so far (the guard judges once it has a full window)
    skips: Array  # int32 []: consecutive steps whose update was skipped


def fresh_guard(window: int) -> GuardState:
    return GuardState(jnp.zeros((window,), jnp.float32), jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32))


class TrainState(NamedTuple):
    step: Array  # int32 []: batches consumed (every step, also one whose update the spike guard skipped)
    params: Any  # fp32 master weights
    opt_state: Any  # fp32 Adam moments, the update count and the LR last applied (olmo_jax/train/optim.py)
    healthy: Array  # bool []: False once a step saw a non-finite loss or grad norm (or too many spikes); later
    # steps then change nothing
    guard: GuardState  # the spike guard's recent losses (a window of 1, unused, when the guard is off)


def init_state(config: ModelConfig, optimizer: optax.GradientTransformation, key: Array,
               guard_window: int = 1) -> TrainState:
    params = init_params(config, key)
    return new_state(params, optimizer, guard_window)


def new_state(params: Any, optimizer: optax.GradientTransformation, guard_window: int = 1) -> TrainState:
    """Step 0 with a fresh optimizer: the step and the optimizer's update count (which the LR follows) agree."""
    return TrainState(jnp.asarray(0, jnp.int32), params, optimizer.init(params), jnp.asarray(True),
                      fresh_guard(guard_window))


def make_train_step(
    model: OLMo, optimizer: optax.GradientTransformation, loss_chunk: int, z_loss: bool,
    guard: SpikeGuard | None = None, per_token: bool = False,
) -> Callable[[TrainState, Array], tuple[TrainState, dict[str, Array]]]:
    """Bind the model (with its run options), the optimizer and the spike guard (None: off); the returned function
    has no Python branches on config. `per_token`: divide the summed losses by B·T rather than B·(T−1).

    batch: int32 [A, M, T], A microbatches of M rows, accumulated inside the compiled step.
    """
    z_weight = Z_LOSS_WEIGHT if z_loss else 0.0

    def loss_fn(params: Any, input_ids: Array, n_targets: int) -> tuple[Array, Any]:
        sums = next_token_loss_sums(model, params, input_ids, loss_chunk)
        return (sums.ce + z_weight * sums.z) / n_targets, sums

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Array) -> tuple[TrainState, dict[str, Array]]:
        a, m, t = batch.shape
        n_targets = a * m * (t if per_token else t - 1)  # the divisor: B·T "tokens" or B·(T−1) "targets"

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
        finite = state.healthy & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        spike, limit = _judge(state.guard, loss, grad_norm, guard)
        skips = jnp.where(spike, state.guard.skips + 1, 0)
        # A non-finite loss or gradient, or one spike too many, leaves the state as it was, for this and every later
        # step, so the loop can stop on it (one step later, without waiting for each step) with the last good state
        # intact; a spike within max_skips consumes its batch and applies no update.
        ok = finite & (skips <= (guard.max_skips if guard else 0))
        apply = ok & ~spike
        recorded = _record(state.guard, loss) if guard else state.guard
        new_guard = jax.tree.map(lambda a, b: jnp.where(apply, a, b), recorded, state.guard)._replace(
            skips=jnp.where(ok, skips, state.guard.skips))
        kept = state._replace(healthy=ok, guard=new_guard)
        updated = TrainState(state.step + 1, params, opt_state, ok, new_guard)
        state = jax.tree.map(lambda new, old: jnp.where(apply, new, old), updated,
                             kept._replace(step=jnp.where(ok, state.step + 1, state.step)))
        metrics = {
            "train/loss": loss,
            "train/z_loss": Z_LOSS_WEIGHT * z / n_targets,
            "train/grad_norm": grad_norm,  # before clipping, as OLMo logs optim/total_grad_norm
            "train/lr": applied_lr(opt_state),  # the LR this update used, from the optimizer's own state
            "train/skipped": spike,  # the spike guard applied no update for this step
            "healthy": ok,  # copies outside the donated state, for the loop's check (not logged)
            "spike_limit": limit,
        }
        return state, metrics

    return train_step


def _judge(history: GuardState, loss: Array, grad_norm: Array, guard: SpikeGuard | None) -> tuple[Array, Array]:
    """Whether this step is a spike: a full window of recent losses, and the loss above their mean + sigma·std (the
    limit, also returned), or a gradient norm of exactly 0."""
    if guard is None:
        return jnp.asarray(False), jnp.asarray(jnp.inf, jnp.float32)
    limit = jnp.mean(history.recent) + guard.sigma * jnp.std(history.recent)
    judged = history.seen >= guard.window
    return judged & ((loss > limit) | (grad_norm == 0)), jnp.where(judged, limit, jnp.inf)


def _record(history: GuardState, loss: Array) -> GuardState:
    window = history.recent.shape[0]
    recent = jax.lax.dynamic_update_index_in_dim(history.recent, loss.astype(jnp.float32), history.seen % window, 0)
    return history._replace(recent=recent, seen=history.seen + 1)


class JittedStep(NamedTuple):
    """The train step as every entry point runs it (the trainer, tools/benchmark.py): bound, sharded, donated."""

    train_step: Any  # jax.jit(train_step): (TrainState, int32 [A, M·devices, T]) → (TrainState, metrics)
    init: Any  # jax.jit: PRNG key → a fresh TrainState laid out on the mesh
    optimizer: optax.GradientTransformation
    abstract_state: TrainState  # ShapeDtypeStructs carrying the state's shardings (restore and AOT targets)
    state_shardings: Any
    batch_sharding: NamedSharding


def jit_train_step(config: ModelConfig, options: RunOptions, optimizer: optax.GradientTransformation,
                   loss_chunk: int, z_loss: bool, mesh: Mesh, guard: SpikeGuard | None = None,
                   per_token: bool = False) -> JittedStep:
    """Bind the model, optimizer and spike guard and jit the step for `mesh` (FSDP state, batch split over devices,
    state donated). The attention implementation is checked here, before tracing, so that a bad choice is one
    ConfigError rather than an error deep inside the trace."""
    attention_impl(options)
    window = guard.window if guard else 1
    abstract = jax.eval_shape(lambda k: init_state(config, optimizer, k, window), jax.random.key(0))
    state_shardings = tree_shardings(mesh, abstract)
    batch = batch_sharding(mesh)
    step_fn = make_train_step(OLMo(config, options), optimizer, loss_chunk, z_loss, guard, per_token)
    train_step = jax.jit(step_fn, in_shardings=(state_shardings, batch), out_shardings=(state_shardings, None),
                         donate_argnums=0)
    init = jax.jit(lambda k: init_state(config, optimizer, k, window), out_shardings=state_shardings)
    return JittedStep(train_step, init, optimizer, with_shardings(abstract, state_shardings), state_shardings, batch)
