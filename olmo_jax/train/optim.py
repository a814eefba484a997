"""OLMo's optimizer as an optax chain: OLMo-style global-norm clipping, then AdamW with OLMo's decay groups, its
learning rate injected from OLMo's schedules (docs/olmo_facts.md §4).

The learning rate lives in the optimizer state (`optax.inject_hyperparams`), so what a step logs as `train/lr` is
read from the state of the optimizer that applied it (`applied_lr`). The schedules are optax's own pieces,
evaluated at OLMo's 1-based step.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from olmo_jax.train.config import OptimizerConfig, SchedulerConfig

# Checkpoints before olmo_jax 0.2 hold the optimizer state of optax.adamw with a schedule (the LR was not in the
# state); `from_legacy_opt_state` converts it. The layout number is recorded in each checkpoint's meta.
OPT_STATE_LAYOUT = 2


def olmo_schedule(config: SchedulerConfig, peak: float, max_steps: int) -> optax.Schedule:
    """OLMo's `Scheduler.get_lr(peak, step, max_steps)` as a function of OLMo's 1-based step (§4.4), from optax
    pieces: a linear warm-up from `warmup_min_lr` (default 0.1 × peak) over `t_warmup` steps, then a cosine or
    linear decay to alpha_f × peak at `t_max` (default max_steps), constant after. Warm-up wins where it overlaps
    the end (t_max ≤ t_warmup), as OLMo's branch order does."""
    if config.name == "constant":
        return optax.constant_schedule(peak)
    t_max, warmup = config.t_max or max_steps, config.t_warmup
    eta_min = peak * config.alpha_f
    low = config.warmup_min_lr if config.warmup_min_lr is not None else 0.1 * peak
    if t_max <= warmup:
        decay = optax.constant_schedule(eta_min)
    elif config.name == "cosine_with_warmup":
        decay = optax.cosine_decay_schedule(peak, t_max - warmup, alpha=config.alpha_f)
    else:
        decay = optax.linear_schedule(peak, eta_min, t_max - warmup)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(low, peak, warmup), decay], [warmup])


def olmo_lr(config: SchedulerConfig, peak: float, step: jax.Array | int, max_steps: int) -> jax.Array:
    """The LR of the step-th optimizer update (OLMo's 1-based global_step)."""
    return jnp.asarray(olmo_schedule(config, peak, max_steps)(step), jnp.float32)


def lr_schedule(config: SchedulerConfig, peak: float, max_steps: int) -> optax.Schedule:
    """The schedule as optax calls it: with count 0 for the first update, which is OLMo's step 1 (§4.4)."""
    schedule = olmo_schedule(config, peak, max_steps)
    return lambda count: schedule(count + 1)


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
    """Clip (if max_grad_norm), then torch-equivalent AdamW whose decay is scaled by the current LR (§4.1), with the
    LR injected into the state from the schedule. Only the LR is injected: the other hyperparameters stay Python
    numbers, so the arithmetic is that of plain optax.adamw."""
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("b1", "b2", "eps", "eps_root", "weight_decay", "mask"))(
        learning_rate=lr_schedule(scheduler, optimizer.learning_rate, max_steps),
        b1=optimizer.betas[0], b2=optimizer.betas[1], eps=optimizer.eps, eps_root=0.0,
        weight_decay=optimizer.weight_decay, mask=lambda p: decay_mask(p, optimizer),
    )
    if max_grad_norm is None:
        return adamw
    return optax.chain(clip_by_global_norm_olmo(max_grad_norm), adamw)


def _injected(opt_state: Any) -> Any:
    """The inject_hyperparams state inside the state of `make_optimizer`'s chain (with or without clipping)."""
    return opt_state if hasattr(opt_state, "hyperparams") else opt_state[-1]


def applied_lr(opt_state: Any) -> jax.Array:
    """The learning rate of the last update applied with this state (of the first one, before any update)."""
    return _injected(opt_state).hyperparams["learning_rate"]


def legacy_opt_state(opt_state: Any) -> Any:
    """The shape of this optimizer's state as checkpoints of layout 1 hold it (plain optax.adamw with a schedule),
    for restoring them: the same arrays, the update count in a ScaleByScheduleState instead of the injected LR."""
    injected = _injected(opt_state)
    adam, masked, _ = injected.inner_state
    old = (adam, masked, optax.ScaleByScheduleState(count=injected.count))
    return old if injected is opt_state else (*opt_state[:-1], old)


def from_legacy_opt_state(legacy: Any, like: Any, schedule: optax.Schedule) -> Any:
    """A layout-1 optimizer state (see `legacy_opt_state`) in this optimizer's layout `like`: the same moments and
    counts, with the LR the last update applied, as inject_hyperparams records it."""
    injected = _injected(like)
    old = legacy if injected is like else legacy[-1]
    adam, masked, scheduled = old
    count = scheduled.count
    lr = jnp.asarray(schedule(jnp.maximum(count - 1, 0)), injected.hyperparams["learning_rate"].dtype)
    counts = jax.tree.map(lambda c: jnp.asarray(count, c.dtype), injected.hyperparams_states)  # the schedule's own
    new = injected._replace(count=count, hyperparams={"learning_rate": lr}, hyperparams_states=counts,
                            inner_state=(adam, masked, injected.inner_state[2]))
    return new if injected is like else (*legacy[:-1], new)


def adam_moments(opt_state: Any) -> tuple[Any, Any, jax.Array]:
    """(mu, nu, count) of the AdamW in `make_optimizer`'s state: torch's exp_avg, exp_avg_sq and step."""
    adam = _injected(opt_state).inner_state[0]
    return adam.mu, adam.nu, adam.count


def with_adam_moments(like: Any, mu: Any, nu: Any, count: int, schedule: optax.Schedule) -> Any:
    """`make_optimizer`'s state `like` (or its abstract shape, jax.eval_shape of init: no zero moments are made)
    holding these moments after `count` updates (a torch AdamW's state at that step), with the LR of the last
    update recorded as inject_hyperparams does."""
    injected = _injected(like)
    adam, masked, last = injected.inner_state
    adam = adam._replace(count=jnp.asarray(count, adam.count.dtype), mu=mu, nu=nu)
    lr = jnp.asarray(schedule(max(count - 1, 0)), injected.hyperparams["learning_rate"].dtype)
    counts = jax.tree.map(lambda c: jnp.asarray(count, c.dtype), injected.hyperparams_states)
    new = injected._replace(count=jnp.asarray(count, injected.count.dtype), hyperparams={"learning_rate": lr},
                            hyperparams_states=counts, inner_state=(adam, masked, last))
    return new if injected is like else (*like[:-1], new)
