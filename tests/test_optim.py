"""OLMo's optimizer: LR schedule test vectors, decay groups, clipping, and AdamW steps against references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import optimizer_config, scheduler_config, tiny_config

from olmo_jax.errors import ConfigError
from olmo_jax.model.transformer import init_params
from olmo_jax.train.optim import (
    applied_lr,
    clip_by_global_norm_olmo,
    decay_mask,
    from_legacy_opt_state,
    legacy_opt_state,
    lr_schedule,
    make_optimizer,
    olmo_lr,
)

# docs/olmo_facts.md §4.4: OLMo-1B's schedule (peak 4e-4, t_warmup 2000, max_duration 739,328).
OLMO_1B_VECTORS = [
    (0, 4.0e-5), (1, 4.018e-5), (2, 4.036e-5), (1000, 2.2e-4), (1999, 3.9982e-4), (2000, 4.0e-4),
    (100000, 3.8453487e-4), (370664, 2.2e-4), (700000, 4.2521204e-5), (739328, 4.0e-5),
]


@pytest.mark.parametrize(("step", "expected"), OLMO_1B_VECTORS)
def test_cosine_with_warmup_matches_olmo_vectors(step: int, expected: float) -> None:
    lr = olmo_lr(scheduler_config(t_warmup=2000, alpha_f=0.1), 4e-4, step, 739_328)
    assert float(lr) == pytest.approx(expected, rel=2e-6)


def _olmo_get_lr(name: str, peak: float, step: int, t_warmup: int, t_max: int, alpha_f: float,
                 warmup_min_lr: float | None) -> float:
    """OLMo's Scheduler.get_lr written out (docs/olmo_facts.md §4.4), in float64, independently of optax."""
    if name == "constant":
        return peak
    eta_min, low = peak * alpha_f, warmup_min_lr if warmup_min_lr is not None else 0.1 * peak
    if step < t_warmup:
        return low + (peak - low) * min(step, t_warmup) / t_warmup
    if step >= t_max:
        return eta_min
    frac = (step - t_warmup) / (t_max - t_warmup)
    if name == "cosine_with_warmup":
        return eta_min + (peak - eta_min) * (1 + math.cos(math.pi * frac)) / 2
    return peak - (peak - eta_min) * frac


@pytest.mark.parametrize(("name", "t_warmup", "t_max", "warmup_min_lr"), [
    ("cosine_with_warmup", 10, 100, None), ("linear_with_warmup", 10, 100, None), ("cosine_with_warmup", 0, 50, None),
    ("cosine_with_warmup", 30, 20, None),  # the run ends inside the warm-up: warm-up wins, as in OLMo
    ("linear_with_warmup", 5, 40, 0.0), ("constant", 10, 100, None),
])
def test_schedules_from_optax_pieces_equal_olmos_formula(name: str, t_warmup: int, t_max: int,
                                                         warmup_min_lr: float | None) -> None:
    config = scheduler_config(name=name, t_warmup=t_warmup, t_max=t_max, alpha_f=0.1, warmup_min_lr=warmup_min_lr)
    for step in range(0, 2 * max(t_max, t_warmup) + 3):
        expected = _olmo_get_lr(name, 3e-3, step, t_warmup, t_max, 0.1, warmup_min_lr)
        assert float(olmo_lr(config, 3e-3, step, 10_000)) == pytest.approx(expected, rel=2e-6, abs=1e-12), step


def test_optax_count_is_shifted_by_one() -> None:
    schedule = lr_schedule(scheduler_config(t_warmup=2000), 4e-4, 739_328)
    assert float(schedule(0)) == pytest.approx(4.018e-5, rel=1e-6)  # the first update uses OLMo's step 1
    assert float(schedule(1999)) == pytest.approx(4.0e-4, rel=1e-6)


def test_t_max_overrides_the_run_length() -> None:
    config = scheduler_config(t_warmup=10, alpha_f=0.1, t_max=110)
    assert float(olmo_lr(config, 1.0, 60, 10_000)) == pytest.approx(0.55, rel=1e-6)  # half way: mean of 1 and 0.1
    assert float(olmo_lr(config, 1.0, 500, 10_000)) == pytest.approx(0.1, rel=1e-6)


def test_linear_with_warmup_and_constant() -> None:
    linear = scheduler_config(name="linear_with_warmup", t_warmup=10, alpha_f=0.1)
    assert float(olmo_lr(linear, 1.0, 0, 110)) == pytest.approx(0.1)
    assert float(olmo_lr(linear, 1.0, 5, 110)) == pytest.approx(0.55)
    assert float(olmo_lr(linear, 1.0, 60, 110)) == pytest.approx(1.0 - 0.9 * 0.5)
    assert float(olmo_lr(linear, 1.0, 110, 110)) == pytest.approx(0.1)
    warm_from = scheduler_config(name="linear_with_warmup", t_warmup=10, warmup_min_lr=0.0)
    assert float(olmo_lr(warm_from, 1.0, 5, 110)) == pytest.approx(0.5)
    assert float(olmo_lr(scheduler_config(name="constant"), 3e-4, 12345, 10)) == pytest.approx(3e-4)


def test_decay_mask_groups() -> None:
    params = init_params(tiny_config(weight_tying=False), jax.random.key(0))
    mask = decay_mask(params, optimizer_config())
    assert mask["embed_tokens"]["embedding"] is False  # no decay on the embedding (§4.2)
    assert mask["lm_head"]["kernel"] is True  # an untied output projection is a Linear: decayed
    for layer in ("layers_0", "layers_1"):
        assert all(jax.tree.leaves(mask[layer]))
    assert decay_mask(params, optimizer_config(decay_embeddings=True))["embed_tokens"]["embedding"] is True
    with_norm = {"norm": {"scale": jnp.ones(3)}, "proj": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}}
    assert decay_mask(with_norm, optimizer_config()) == {"norm": {"scale": False}, "proj": {"kernel": True,
                                                                                           "bias": False}}
    assert decay_mask(with_norm, optimizer_config(decay_norm_and_bias=True))["proj"]["bias"] is True


def test_olmo_clipping_coefficient() -> None:
    grads = {"a": jnp.array([3.0, 4.0])}  # norm 5
    clipped, _ = clip_by_global_norm_olmo(1.0).update(grads, None)
    np.testing.assert_allclose(clipped["a"], np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-7)
    tiny = {"a": jnp.array([0.0, 2e-6])}  # where the +1e-6 matters: coefficient 1e-6 / 3e-6, not 1e-6 / 2e-6
    clipped, _ = clip_by_global_norm_olmo(1e-6).update(tiny, None)
    np.testing.assert_allclose(clipped["a"][1], 2e-6 / 3, rtol=1e-5)
    small = {"a": jnp.array([0.3, 0.4])}  # below the threshold: multiplied by 1
    np.testing.assert_array_equal(clip_by_global_norm_olmo(1.0).update(small, None)[0]["a"], small["a"])


def _reference_adamw_step(params: dict, grads: dict, decay: dict, lr: float, t: int, m: dict, v: dict,
                          b1: float = 0.9, b2: float = 0.95, eps: float = 1e-5, wd: float = 0.1,
                          max_norm: float = 1.0) -> dict:
    """torch.optim.AdamW's update (docs/olmo_facts.md §4.1) after OLMo's clipping (§4.3), written out in numpy."""
    norm = math.sqrt(sum(float(np.sum(np.square(g))) for g in grads.values()))
    coef = min(1.0, max_norm / (norm + 1e-6))
    out = {}
    for k, p in params.items():
        g = grads[k] * coef
        p = p * (1 - lr * wd) if decay[k] else p
        m[k] = b1 * m[k] + (1 - b1) * g
        v[k] = b2 * v[k] + (1 - b2) * g * g
        denom = np.sqrt(v[k]) / math.sqrt(1 - b2**t) + eps
        out[k] = p - (lr / (1 - b1**t)) * m[k] / denom
    return out


def test_adamw_steps_equal_the_hand_written_reference() -> None:
    rng = np.random.default_rng(0)
    params = {"embedding": rng.normal(size=(7, 5)).astype(np.float32),
              "kernel": rng.normal(size=(5, 3)).astype(np.float32)}
    tree = {"embed": {"embedding": params["embedding"]}, "proj": {"kernel": params["kernel"]}}
    sched = scheduler_config(t_warmup=3)
    opt = make_optimizer(optimizer_config(learning_rate=1e-2), sched, 20, max_grad_norm=1.0)
    state = opt.init(tree)
    ref = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in ref.items()}
    v = {k: np.zeros_like(x) for k, x in ref.items()}
    for t in range(1, 5):
        grads = {k: rng.normal(size=p.shape).astype(np.float32) * (3.0 if t % 2 else 0.1) for k, p in params.items()}
        updates, state = opt.update({"embed": {"embedding": grads["embedding"]}, "proj": {"kernel": grads["kernel"]}},
                                    state, tree)
        tree = optax.apply_updates(tree, updates)
        lr = float(olmo_lr(sched, 1e-2, t, 20))
        ref = _reference_adamw_step(ref, grads, {"embedding": False, "kernel": True}, lr, t, m, v)
        np.testing.assert_allclose(tree["embed"]["embedding"], ref["embedding"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tree["proj"]["kernel"], ref["kernel"], rtol=1e-5, atol=1e-6)


def test_adamw_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(6, 4)).astype(np.float32)
    opt = make_optimizer(optimizer_config(learning_rate=1e-2), scheduler_config(name="constant"), 10, None)
    tree = {"proj": {"kernel": jnp.asarray(w0)}}
    state = opt.init(tree)
    w = torch.nn.Parameter(torch.tensor(w0))
    torch_opt = torch.optim.AdamW([w], lr=1e-2, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    for _ in range(5):
        g = rng.normal(size=w0.shape).astype(np.float32)
        updates, state = opt.update({"proj": {"kernel": jnp.asarray(g)}}, state, tree)
        tree = optax.apply_updates(tree, updates)
        w.grad = torch.tensor(g)
        torch_opt.step()
    np.testing.assert_allclose(tree["proj"]["kernel"], w.detach().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(name="sgd"), "only 'adamw'"), (dict(betas=(0.9, 1.0)), "betas"), (dict(learning_rate=0.0), "learning_rate"),
])
def test_bad_optimizer_configs(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        optimizer_config(**kwargs)


def test_a_legacy_optimizer_state_converts_to_the_same_state() -> None:
    """Checkpoints of olmo_jax < 0.2 hold plain optax.adamw's state with a schedule (the LR not in the state).
    Built here with optax alone, stepped alongside ours, and converted: the same moments, counts and LR."""
    params = {"embed": {"embedding": jnp.ones((7, 5))}, "proj": {"kernel": jnp.full((5, 3), 0.5)}}
    config, sched = optimizer_config(learning_rate=1e-2), scheduler_config(t_warmup=3, t_max=None)
    schedule = lr_schedule(sched, 1e-2, 20)
    ours = make_optimizer(config, sched, 20, max_grad_norm=1.0)
    legacy = optax.chain(clip_by_global_norm_olmo(1.0), optax.adamw(
        schedule, b1=0.9, b2=0.95, eps=1e-5, eps_root=0.0, weight_decay=0.1,
        mask=lambda p: decay_mask(p, config)))
    new_state, old_state = ours.init(params), legacy.init(params)
    assert jax.tree.structure(legacy_opt_state(new_state)) == jax.tree.structure(old_state)
    rng = np.random.default_rng(2)
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
        _, new_state = ours.update(grads, new_state, params)
        _, old_state = legacy.update(grads, old_state, params)
    converted = from_legacy_opt_state(old_state, new_state, schedule)
    assert jax.tree.structure(converted) == jax.tree.structure(new_state)
    jax.tree.map(np.testing.assert_array_equal, converted, new_state)
    assert float(applied_lr(converted)) == float(schedule(2))  # the LR of the third update
