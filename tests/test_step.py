"""The jitted train step: chunked loss, gradient accumulation, non-finite handling, z-loss, precision, remat and the
logged LR (read from the optimizer's state)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import optimizer_config, scheduler_config, tiny_config

from olmo_jax.model.config import RunOptions
from olmo_jax.model.transformer import OLMo, init_params
from olmo_jax.train.loss import LossSums, chunk_length, next_token_loss_sums
from olmo_jax.train.optim import applied_lr, lr_schedule, make_optimizer
from olmo_jax.train.step import Z_LOSS_WEIGHT, init_state, make_train_step

SCHED = scheduler_config(t_warmup=2, t_max=None)


def reference_loss_sums(model: OLMo, params: dict, input_ids: jax.Array) -> LossSums:
    """The same sums from the full logits at once, written independently of olmo_jax/train/loss.py."""
    logits = model.apply({"params": params}, input_ids)[:, :-1]  # [B, T−1, V]
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, input_ids[:, 1:, None], axis=-1)[..., 0]
    return LossSums((lse - target).sum(), jnp.square(lse).sum())


def _step(config, chunk: int = 16, z_loss: bool = False, lr: float = 1e-2, options: RunOptions | None = None,
          per_token: bool = False):
    opt = make_optimizer(optimizer_config(learning_rate=lr), SCHED, 50, 1.0)
    fn = jax.jit(make_train_step(OLMo(config, options or RunOptions()), opt, chunk, z_loss, per_token=per_token))
    return fn, init_state(config, opt, jax.random.key(0))


def _batch(shape, vocab=250, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_loss_equals_plain_loss_and_gradient(chunk: int) -> None:
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    ids = _batch((3, 20))
    model = OLMo(config)
    a = jax.jit(lambda p: next_token_loss_sums(model, p, ids, chunk))(params)  # jitted: eager is slow
    b = reference_loss_sums(model, params, ids)
    np.testing.assert_allclose(a.ce, b.ce, rtol=1e-6)
    np.testing.assert_allclose(a.z, b.z, rtol=1e-6)
    ga = jax.jit(jax.grad(lambda p: next_token_loss_sums(model, p, ids, chunk).ce))(params)
    gb = jax.jit(jax.grad(lambda p: reference_loss_sums(model, p, ids).ce))(params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), ga, gb)


def test_chunk_length_divides_the_sequence() -> None:
    assert chunk_length(2048, 512) == 512 and chunk_length(20, 16) == 10 and chunk_length(7, 100) == 7


@pytest.mark.slow
def test_loss_is_the_mean_over_all_targets() -> None:
    config = tiny_config()
    step, state = _step(config)
    batch = _batch((1, 4, 20))
    _, metrics = step(state, batch)
    sums = reference_loss_sums(OLMo(config), state.params, batch[0])
    np.testing.assert_allclose(metrics["train/loss"], sums.ce / (4 * 19), rtol=1e-6)
    np.testing.assert_allclose(metrics["train/z_loss"], Z_LOSS_WEIGHT * sums.z / (4 * 19), rtol=1e-6)


def test_per_token_normalisation_divides_by_every_position() -> None:
    """loss_normalization="tokens" (ai2-olmo ≥ 0.4.0): the same sums over B·T, also for the z-loss, whichever way
    the batch is cut into microbatches."""
    config = tiny_config()
    batch = _batch((1, 4, 20))
    sums = reference_loss_sums(OLMo(config), init_state(config, make_optimizer(
        optimizer_config(learning_rate=1e-2), SCHED, 50, 1.0), jax.random.key(0)).params, batch[0])
    for shape in ((1, 4, 20), (2, 2, 20)):
        step, state = _step(config, z_loss=True, per_token=True)
        _, metrics = step(state, batch.reshape(shape))
        np.testing.assert_allclose(metrics["train/loss"], sums.ce / (4 * 20), rtol=1e-6)
        np.testing.assert_allclose(metrics["train/z_loss"], Z_LOSS_WEIGHT * sums.z / (4 * 20), rtol=1e-6)


@pytest.mark.slow
def test_accumulating_microbatches_equals_one_large_batch() -> None:
    config = tiny_config()
    step, state = _step(config)
    rows = _batch((8, 24))
    _, big = step(state, rows.reshape(1, 8, 24))
    step2, state2 = _step(config)
    new4, small = step2(state2, rows.reshape(4, 2, 24))
    for key in ("train/loss", "train/grad_norm", "train/lr"):
        np.testing.assert_allclose(small[key], big[key], rtol=1e-5)
    step3, state3 = _step(config)
    new1, _ = step3(state3, rows.reshape(1, 8, 24))
    # Adam divides by |g|, so fp32 summation-order noise in tiny gradients moves a few weights by ≪ lr.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), new4.params, new1.params)


@pytest.mark.slow
def test_one_step_matches_an_optax_reference_update() -> None:
    """The compiled step = grad of the mean CE, then the optimizer chain, applied once."""
    config = tiny_config()
    step, state = _step(config)
    batch = _batch((2, 3, 16))
    params0 = state.params
    opt = make_optimizer(optimizer_config(learning_rate=1e-2), SCHED, 50, 1.0)

    def mean_ce(p):
        return reference_loss_sums(OLMo(config), p, batch.reshape(6, 16)).ce / (6 * 15)

    grads = jax.jit(jax.grad(mean_ce))(params0)  # jitted: eager is slow
    updates, _ = jax.jit(opt.update)(grads, opt.init(params0), params0)
    expected = optax.apply_updates(params0, updates)
    new, metrics = step(state, batch)
    assert int(new.step) == 1
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), new.params, expected)
    np.testing.assert_allclose(metrics["train/grad_norm"], optax.tree.norm(grads), rtol=1e-5)


def test_loss_falls_on_a_repeated_batch() -> None:
    step, state = _step(tiny_config())
    batch = _batch((1, 4, 32))
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["train/loss"]))
    assert losses[-1] < 0.5 * losses[0]


def test_non_finite_loss_leaves_the_state_unchanged_from_then_on() -> None:
    config = tiny_config()
    step, state = _step(config)
    batch = _batch((1, 2, 16))
    state, _ = step(state, batch)
    good = jax.tree.map(np.asarray, state)
    bad = state._replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), state.params))
    after_bad, metrics = step(bad, batch)
    assert not bool(after_bad.healthy) and not np.isfinite(float(metrics["train/loss"]))
    assert int(after_bad.step) == 1  # the update was not applied
    healed = after_bad._replace(params=jax.tree.map(jnp.asarray, good.params))
    later, _ = step(healed, batch)  # once unhealthy, later steps change nothing either
    assert int(later.step) == 1
    jax.tree.map(np.testing.assert_array_equal, later.params, good.params)


@pytest.mark.slow
def test_z_loss_is_added_only_when_enabled() -> None:
    config = tiny_config()
    batch = _batch((1, 2, 16))
    s_off, state = _step(config, z_loss=False)
    s_on, _ = _step(config, z_loss=True)
    off, m_off = s_off(state, batch)
    on, m_on = s_on(state, batch)
    np.testing.assert_allclose(m_on["train/loss"], m_off["train/loss"], rtol=1e-6)  # reported CE is the same
    assert float(m_on["train/z_loss"]) > 0
    diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), on.params, off.params))
    assert max(diff) > 0  # the z-loss changed the gradient


@pytest.mark.slow
def test_bf16_step_keeps_fp32_master_weights_and_moments() -> None:
    step, state = _step(tiny_config(), options=RunOptions(dtype="bfloat16"))
    state, metrics = step(state, _batch((2, 2, 16)))
    assert np.isfinite(float(metrics["train/loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state.opt_state))


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["save_matmuls", "full"])
def test_remat_policies_give_identical_losses(remat: str) -> None:
    batch = _batch((2, 2, 16))
    base, state = _step(tiny_config())
    other, _ = _step(tiny_config(), options=RunOptions(remat=remat))
    s0, s1 = state, state
    for _ in range(3):
        s0, m0 = base(s0, batch)
        s1, m1 = other(s1, batch)
        np.testing.assert_allclose(m1["train/loss"], m0["train/loss"], rtol=1e-6)


def test_the_logged_lr_is_the_one_the_optimizer_applied() -> None:
    """train/lr comes from the optimizer state (optax.inject_hyperparams), step by step equal to the schedule at
    OLMo's step; and the update is scaled by exactly that LR."""
    config = tiny_config()
    step, state = _step(config, lr=0.5)
    schedule = lr_schedule(SCHED, 0.5, 50)
    batch = _batch((1, 2, 16))
    for k in range(4):
        new, metrics = step(state, batch)
        assert float(metrics["train/lr"]) == float(applied_lr(new.opt_state))
        assert float(metrics["train/lr"]) == pytest.approx(float(schedule(k)), rel=1e-6)  # jit may round apart
        state = new
    assert len({float(schedule(k)) for k in range(4)}) == 4  # warm-up, then decay: the LR differs every step
