"""The Flax OLMo: exact parameter count, init distributions, causality, config validation, run options (precision,
remat, attention) and the blocked XLA attention."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import olmo_1b, tiny_config

from olmo_jax.errors import ConfigError
from olmo_jax.model.config import ModelConfig, RunOptions
from olmo_jax.model.transformer import OLMo, init_params, param_shapes


def test_olmo_1b_parameter_count_without_allocation() -> None:
    shapes = param_shapes(olmo_1b())  # jax.eval_shape: nothing is allocated
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 1_176_764_416
    assert olmo_1b().num_params() == 1_176_764_416
    assert len(jax.tree.leaves(shapes)) == 1 + 16 * 7  # embedding + 7 projections per block
    layer = shapes["layers_0"]
    assert layer["self_attn"]["q_proj"]["kernel"].shape == (2048, 2048)
    assert layer["mlp"]["gate_proj"]["kernel"].shape == (2048, 8192)
    assert layer["mlp"]["down_proj"]["kernel"].shape == (8192, 2048)
    assert shapes["embed_tokens"]["embedding"].shape == (50304, 2048)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))


def test_olmo_7b_untied_parameter_count() -> None:
    config = dataclasses.replace(olmo_1b(), d_model=4096, n_heads=32, n_layers=32, mlp_hidden_size=22016,
                                 weight_tying=False, clip_qkv=8.0, max_sequence_length=4096)
    shapes = param_shapes(config)
    assert sum(x.size for x in jax.tree.leaves(shapes)) == config.num_params() == 6_888_095_744
    assert shapes["lm_head"]["kernel"].shape == (4096, 50304)


def _realised_std(cutoff: float | None) -> float:
    """Std of N(0, 1) truncated to ±cutoff (no variance correction, as torch's trunc_normal_)."""
    if cutoff is None:
        return 1.0
    phi = math.exp(-cutoff**2 / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cutoff / math.sqrt(2))
    return math.sqrt(1 - 2 * cutoff * phi / mass)


@pytest.mark.parametrize("init_fn", ["mitchell", "normal"])
def test_init_std_per_tensor_kind(init_fn: str) -> None:
    config = tiny_config(d_model=256, n_heads=4, n_layers=3, mlp_ratio=8, vocab_size=4000, embedding_size=4096,
                         eos_token_id=3999, init_fn=init_fn, weight_tying=False)
    params = init_params(config, jax.random.key(0))
    d, f = 256, 1024
    cutoff = 3.0 if init_fn == "mitchell" else None
    trunc = _realised_std(cutoff)
    for i in range(3):
        layer = params[f"layers_{i}"]
        if init_fn == "mitchell":  # docs/olmo_facts.md §2.1
            expected = {
                ("self_attn", "q_proj"): 1 / math.sqrt(d), ("self_attn", "k_proj"): 1 / math.sqrt(d),
                ("self_attn", "v_proj"): 1 / math.sqrt(d), ("mlp", "gate_proj"): 1 / math.sqrt(d),
                ("mlp", "up_proj"): 1 / math.sqrt(d), ("self_attn", "o_proj"): 1 / math.sqrt(2 * d * (i + 1)),
                ("mlp", "down_proj"): 1 / math.sqrt(2 * f * (i + 1)),
            }
        else:  # §2.2: init_std everywhere, untruncated
            expected = {(m, p): 0.02 for m, p in [("self_attn", "q_proj"), ("self_attn", "o_proj"),
                                                  ("mlp", "up_proj"), ("mlp", "down_proj")]}
        for (module, proj), std in expected.items():
            w = np.asarray(layer[module][proj]["kernel"])
            # The sample std of n draws has relative standard error ≈ 1/sqrt(2n); allow 5 of them.
            tol = 5 / math.sqrt(2 * w.size)
            assert abs(w.std() / (std * trunc) - 1) < tol, (i, module, proj, w.std(), std * trunc)
            assert abs(w.mean()) < 5 * std / math.sqrt(w.size)
            if cutoff is not None:
                assert np.abs(w).max() <= cutoff * std * (1 + 1e-6)
    emb = np.asarray(params["embed_tokens"]["embedding"])
    emb_std = 1 / math.sqrt(d) if init_fn == "mitchell" else 0.02
    assert abs(emb.std() / (emb_std * trunc) - 1) < 5 / math.sqrt(2 * emb.size)
    head = np.asarray(params["lm_head"]["kernel"])
    head_std = 1 / math.sqrt(d) if init_fn == "mitchell" else 0.02
    assert abs(head.std() / (head_std * trunc) - 1) < 5 / math.sqrt(2 * head.size)


def test_mitchell_truncation_is_without_variance_correction() -> None:
    assert _realised_std(3.0) == pytest.approx(0.98657, abs=1e-5)  # docs/olmo_facts.md §2: ≈ 0.9865·std


def test_causality() -> None:
    config = tiny_config(n_layers=3)
    params = init_params(config, jax.random.key(1))
    model = OLMo(config)
    ids = jax.random.randint(jax.random.key(2), (2, 23), 0, config.vocab_size)
    base = model.apply({"params": params}, ids)
    for t in (0, 11, 22):
        changed = ids.at[:, t].set((ids[:, t] + 7) % config.vocab_size)
        out = model.apply({"params": params}, changed)
        np.testing.assert_array_equal(np.asarray(out[:, :t]), np.asarray(base[:, :t]))
        assert not np.allclose(out[:, t], base[:, t])


@pytest.mark.slow
def test_logits_are_fp32_over_the_padded_vocabulary_in_both_precisions() -> None:
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    for dtype in ("float32", "bfloat16"):
        out = OLMo(config, RunOptions(dtype=dtype)).apply({"params": params}, jnp.zeros((2, 5), jnp.int32))
        assert out.shape == (2, 5, 256) and out.dtype == jnp.float32
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_bf16_forward_is_close_to_fp32() -> None:
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(3), (2, 17), 0, config.vocab_size)
    fp32 = OLMo(config).apply({"params": params}, ids)
    bf16 = OLMo(config, RunOptions(dtype="bfloat16")).apply({"params": params}, ids)
    assert np.abs(np.asarray(fp32 - bf16)).max() < 0.05 * np.abs(np.asarray(fp32)).max()


@pytest.mark.slow
@pytest.mark.parametrize("remat", ["save_matmuls", "full"])
def test_remat_changes_nothing_numerically(remat: str) -> None:
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(3), (2, 9), 0, config.vocab_size)

    def loss(p: dict, options: RunOptions) -> jax.Array:
        return OLMo(config, options).apply({"params": p}, ids).mean()

    g0 = jax.grad(loss)(params, RunOptions())
    g1 = jax.grad(loss)(params, RunOptions(remat=remat))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), g0, g1)


@pytest.mark.slow
def test_kv_cache_decode_equals_full_forward() -> None:
    config = tiny_config(n_kv_heads=2)
    params = init_params(config, jax.random.key(0))
    model = OLMo(config)
    ids = jax.random.randint(jax.random.key(4), (2, 12), 0, config.vocab_size)
    full = model.apply({"params": params}, ids)
    shape = (2, 16, config.kv_heads, config.head_dim)
    cache = [(jnp.zeros(shape), jnp.zeros(shape)) for _ in range(config.n_layers)]
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    key_mask = jnp.ones((2, 16), bool)
    prefill, cache = model.apply({"params": params}, ids[:, :8], positions[:, :8], cache, 0, key_mask,
                                 method=OLMo.decode)
    np.testing.assert_allclose(prefill, full[:, :8], atol=2e-5)
    for t in range(8, 12):
        step, cache = model.apply({"params": params}, ids[:, t:t + 1], positions[:, t:t + 1], cache, t, key_mask,
                                  method=OLMo.decode)
        np.testing.assert_allclose(step[:, 0], full[:, t], atol=2e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(d_model=65), "divisible by n_heads"),
        (dict(n_kv_heads=3), "divisible by n_kv_heads"),
        (dict(embedding_size=200), "embedding_size=200 must be ≥ vocab_size=250"),
        (dict(init_fn="xavier"), "init_fn='xavier'"),
        (dict(eos_token_id=300), "eos_token_id=300"),
        (dict(clip_qkv=0.0), "clip_qkv=0.0"),
    ],
)
def test_invalid_model_configs_are_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(remat="some"), "remat='some'"), (dict(dtype="float16"), "dtype='float16'"),
    (dict(attention_impl="flash"), "attention_impl='flash'"),
])
def test_invalid_run_options_are_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunOptions(**overrides)


@pytest.mark.slow
def test_run_options_never_change_the_parameters() -> None:
    """The architecture alone shapes and draws the parameters; how the model runs is a separate choice."""
    config = tiny_config()
    plain = init_params(config, jax.random.key(5))
    for options in (RunOptions(dtype="bfloat16"), RunOptions(remat="full"), RunOptions(attention_impl="xla")):
        other = OLMo(config, options).init(jax.random.key(5), jnp.zeros((1, 1), jnp.int32))["params"]
        jax.tree.map(np.testing.assert_array_equal, other, plain)
    assert "dtype" not in {f.name for f in dataclasses.fields(ModelConfig)}


def test_a_checkpoint_record_with_run_options_still_reads() -> None:
    """Checkpoints of olmo_jax < 0.2 saved compute_dtype, attention_impl and remat with the model: ignored now."""
    record = dataclasses.asdict(tiny_config()) | {"compute_dtype": "bfloat16", "attention_impl": "cudnn",
                                                   "remat": "full"}
    assert ModelConfig.from_record(record) == tiny_config()
    with pytest.raises(ConfigError, match="not an OLMo model config"):
        ModelConfig.from_record({"d_model": 3})


def test_config_is_frozen() -> None:
    config = tiny_config()
    with pytest.raises(AttributeError):
        config.d_model = 3  # type: ignore[misc]


def test_attention_impl_auto_picks_cudnn_only_on_a_gpu_in_bf16() -> None:
    from olmo_jax.model.attention import attention_impl

    bf16, fp32 = RunOptions(dtype="bfloat16"), RunOptions()
    assert attention_impl(bf16) == "xla"  # this CPU machine
    assert attention_impl(bf16, backend="gpu") == "cudnn"
    assert attention_impl(fp32, backend="gpu") == "xla"  # cuDNN flash attention takes bf16/fp16 only
    assert attention_impl(RunOptions(attention_impl="xla", dtype="bfloat16"), backend="gpu") == "xla"
    assert attention_impl(RunOptions(attention_impl="cudnn", dtype="bfloat16"), backend="gpu") == "cudnn"


def test_explicit_cudnn_where_it_cannot_run_is_a_clear_error() -> None:
    from olmo_jax.model.attention import attention_impl

    options = RunOptions(attention_impl="cudnn", dtype="bfloat16")
    with pytest.raises(ConfigError, match=r"attention_impl='cudnn'.*backend is 'cpu'.*Use attention_impl 'auto'"):
        attention_impl(options)
    with pytest.raises(ConfigError, match=r"compute dtype 'float32'"):
        attention_impl(RunOptions(attention_impl="cudnn"), backend="gpu")
    params = init_params(tiny_config(), jax.random.key(0))  # the same parameters; the model names the fix too
    with pytest.raises(ConfigError, match=r"needs an NVIDIA GPU"):
        OLMo(tiny_config(), options).apply({"params": params}, jnp.zeros((1, 8), jnp.int32))


@pytest.mark.slow
@pytest.mark.parametrize(("t", "n", "kv", "block"), [(20, 4, 4, 8), (20, 4, 2, 8), (64, 2, 1, 4), (7, 2, 2, 128)])
def test_blocked_causal_attention_equals_jax_attention(t: int, n: int, kv: int, block: int) -> None:
    """Our query-blocked XLA attention against jax.nn.dot_product_attention, values and gradients: blocks that do not
    divide T, grouped key/value heads, the at-most-8-blocks rule (T 64 with block 4 → blocks of 8), one block."""
    from olmo_jax.model.attention import causal_attention

    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, t, n, 8))
    k, v = (jax.random.normal(key, (2, t, kv, 8)) for key in keys[1:3])
    cotangent = jax.random.normal(keys[3], (2, t, n, 8))

    def ours(q, k, v):
        return jnp.sum(causal_attention(q, k, v, "xla", block=block) * cotangent)

    def theirs(q, k, v):
        return jnp.sum(jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla") * cotangent)

    forward = jax.jit(lambda q, k, v: causal_attention(q, k, v, "xla", block=block))  # jitted: eager is slow
    np.testing.assert_allclose(forward(q, k, v), jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=2e-6)
    grads = jax.jit(jax.grad(ours, (0, 1, 2)))(q, k, v)
    for a, b in zip(grads, jax.jit(jax.grad(theirs, (0, 1, 2)))(q, k, v), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.slow
def test_blocked_causal_attention_in_bf16_matches_jax_attention_exactly() -> None:
    """Same numerics as the generic XLA path (fp32 scores, scaled in fp32; fp32 softmax; bf16 probabilities), so
    the same bits, for a head size whose scale 1/√H is not a power of two too."""
    from olmo_jax.model.attention import causal_attention

    for h in (16, 96):
        keys = jax.random.split(jax.random.key(1), 3)
        q, k, v = (jax.random.normal(key, (2, 40, 4, h), jnp.bfloat16) for key in keys)
        ours = causal_attention(q, k, v, "xla", block=16)
        assert ours.dtype == jnp.bfloat16
        np.testing.assert_array_equal(ours, jax.nn.dot_product_attention(q, k, v, is_causal=True))
