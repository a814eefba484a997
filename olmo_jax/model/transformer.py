"""The OLMo-1 model family in Flax linen: numerically the same model as allenai/OLMo and HF `OlmoForCausalLM`.

Read top to bottom: norm → attention → MLP → block → model (the config is in `olmo_jax/model/config.py`, the
initialisation in `olmo_jax/model/init.py`, RoPE and the attention computation itself in
`olmo_jax/model/attention.py`). Parameter names follow Hugging Face's OLMo modules (`embed_tokens`,
`layers_N/self_attn/q_proj`, `mlp/gate_proj`, `lm_head`), so HF conversion is a name table plus transposes
(`olmo_jax/model/hf.py`). § numbers cite docs/olmo_facts.md.

Every module takes the architecture (`ModelConfig`) and how it runs (`RunOptions`: compute dtype, attention
implementation, remat); only the first shapes the parameters.

Dimension letters: B batch, T query time, S key/value time, D d_model, N query heads, K key/value heads,
H head dim, F SwiGLU inner size (HF `intermediate_size`), V padded vocabulary (`embedding_size`).

Projections run on rows flattened to [B·T, D] ("flat matmuls"): the same math, but XLA:CPU's backward pass of a 2-D
matmul is ~1.6× faster than that of a [B, T, D] one (docs/performance.md); on a GPU the reshape is free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from olmo_jax.model.attention import Rope, apply_rope, attention_impl, causal_attention, rope_tables
from olmo_jax.model.config import ModelConfig, RunOptions
from olmo_jax.model.init import init_cutoff, init_stds, truncated_normal

Array = jax.Array


def layer_norm(x: Array, eps: float) -> Array:
    """Non-parametric LayerNorm computed in fp32; the output stays fp32, as under torch autocast (§1.3)."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


KVCache = tuple[Array, Array]  # ([B, S, K, H], [B, S, K, H]) for one layer


def projection(config: ModelConfig, options: RunOptions, features: int, std: float, name: str | None = None
               ) -> nn.Dense:
    """A bias-free Linear with fp32 parameters computing in the compute dtype, initialised as OLMo does."""
    return nn.Dense(features, use_bias=False, dtype=jnp.dtype(options.dtype), param_dtype=jnp.float32, name=name,
                    kernel_init=truncated_normal(std, init_cutoff(config)))


class Attention(nn.Module):
    config: ModelConfig
    options: RunOptions
    layer_id: int

    def setup(self) -> None:
        c = self.config
        stds = init_stds(c, self.layer_id)
        o = self.options
        self.q_proj = projection(c, o, c.n_heads * c.head_dim, stds["in_proj"])
        self.k_proj = projection(c, o, c.kv_heads * c.head_dim, stds["in_proj"])
        self.v_proj = projection(c, o, c.kv_heads * c.head_dim, stds["in_proj"])
        self.o_proj = projection(c, o, c.d_model, stds["o_proj"])

    def __call__(
        self, x: Array, rope: Rope, cache: KVCache | None = None, cache_index: Array | None = None,
        key_mask: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        """x: [B, T, D] → [B, T, D]; rope: the forward pass's `rope_tables`.

        Training and scoring pass no cache: plain causal attention. Decoding passes `cache` (this layer's keys and
        values for S slots), `cache_index` (the slot of x's first token) and `key_mask` [B, S] (False for
        left-padding slots); x's keys and values are written into the cache and queries see slots ≤ their own.
        """
        c = self.config
        b, t, d = x.shape
        x = x.reshape(b * t, d)  # [B·T, D]: flat matmuls (module docstring)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if c.clip_qkv is not None:
            q, k, v = (jnp.clip(y, -c.clip_qkv, c.clip_qkv) for y in (q, k, v))
        q = apply_rope(q.reshape(b, t, c.n_heads, c.head_dim), rope)  # [B, T, N, H]
        k = apply_rope(k.reshape(b, t, c.kv_heads, c.head_dim), rope)  # [B, T, K, H]
        v = v.reshape(b, t, c.kv_heads, c.head_dim)  # [B, T, K, H]
        if cache is None:
            out = causal_attention(q, k, v, attention_impl(self.options))
        else:
            k_cache = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, axis=1)
            v_cache = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, axis=1)
            cache = (k_cache, v_cache)
            slots = jnp.arange(k_cache.shape[1])
            causal = slots[None, :] <= (cache_index + jnp.arange(t))[:, None]  # [T, S]
            mask = causal[None, None] & key_mask[:, None, None, :]  # [B, 1, T, S]
            out = jax.nn.dot_product_attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), mask=mask)
        return self.o_proj(out.reshape(b * t, c.n_heads * c.head_dim)).reshape(b, t, d), cache


class MLP(nn.Module):
    config: ModelConfig
    options: RunOptions
    layer_id: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """SwiGLU: down(silu(gate(x)) · up(x)). OLMo's ff_proj rows [0, F) are `up`, [F, 2F) `gate` (§1.5)."""
        c, o = self.config, self.options
        stds = init_stds(c, self.layer_id)
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [B·T, D]: flat matmuls (module docstring)
        gate = projection(c, o, c.mlp_inner, stds["in_proj"], "gate_proj")(x)  # [B·T, F]
        up = projection(c, o, c.mlp_inner, stds["in_proj"], "up_proj")(x)  # [B·T, F]
        return projection(c, o, c.d_model, stds["down_proj"], "down_proj")(nn.silu(gate) * up).reshape(shape)


class Block(nn.Module):
    """Pre-norm sequential block: x + attn(LN(x)), then x + mlp(LN(x)) (§1.2)."""

    config: ModelConfig
    options: RunOptions
    layer_id: int

    @nn.compact
    def __call__(
        self, x: Array, rope: Rope, cache: KVCache | None = None, cache_index: Array | None = None,
        key_mask: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        c = self.config
        attn, cache = Attention(c, self.options, self.layer_id, name="self_attn")(
            layer_norm(x, c.layer_norm_eps), rope, cache, cache_index, key_mask
        )
        x = x + attn.astype(x.dtype)
        x = x + MLP(c, self.options, self.layer_id, name="mlp")(layer_norm(x, c.layer_norm_eps)).astype(x.dtype)
        return x, cache


# What a rematerialised block keeps for the backward pass: "save_matmuls" keeps the outputs of the projections
# (matmuls without batch dimensions) and recomputes norms, RoPE, attention and activations.
REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def project(hidden: Array, kernel: Array, dtype: jnp.dtype) -> Array:
    """hidden [..., D] @ kernel [D, V] with operands in `dtype` and an fp32 result (as a flat 2-D
    matmul, see the module docstring)."""
    flat = hidden.reshape(-1, hidden.shape[-1]).astype(dtype)
    logits = jnp.einsum("nd,dv->nv", flat, kernel.astype(dtype), preferred_element_type=jnp.float32)
    return logits.reshape(*hidden.shape[:-1], kernel.shape[-1])


class LMHead(nn.Module):
    """The untied output projection, HF's `lm_head` (kernel [D, V])."""

    config: ModelConfig
    options: RunOptions

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        c = self.config
        init = truncated_normal(init_stds(c, 0)["lm_head"], init_cutoff(c))
        kernel = self.param("kernel", init, (c.d_model, c.padded_vocab), jnp.float32)
        return project(hidden, kernel, jnp.dtype(self.options.dtype))


class OLMo(nn.Module):
    """`OLMo(config, options).apply({"params": params}, input_ids)` → fp32 logits [B, T, V] over the padded
    vocabulary. `options` (default: fp32, XLA attention off a GPU, no remat) never changes the parameters."""

    config: ModelConfig
    options: RunOptions = RunOptions()

    def setup(self) -> None:
        c, o = self.config, self.options
        stds, cutoff = init_stds(c, 0), init_cutoff(c)
        self.embed_tokens = nn.Embed(
            c.padded_vocab, c.d_model, param_dtype=jnp.float32, embedding_init=truncated_normal(stds["embed"], cutoff)
        )
        block = Block if o.remat == "none" else nn.remat(Block, policy=REMAT_POLICIES[o.remat])
        self.layers = [block(c, o, i, name=f"layers_{i}") for i in range(c.n_layers)]
        if not c.weight_tying:
            self.lm_head = LMHead(c, o, name="lm_head")

    def __call__(self, input_ids: Array, positions: Array | None = None) -> Array:
        """input_ids: [B, T] int → logits [B, T, V] float32."""
        return self.logits(self.hidden_states(input_ids, positions))

    def hidden_states(self, input_ids: Array, positions: Array | None = None) -> Array:
        """input_ids: [B, T] → the final normed hidden states [B, T, D] (fp32), before the output projection.

        The train step projects these to logits chunk by chunk (olmo_jax/train/loss.py) so that a microbatch's full
        fp32 logits never exist at once.
        """
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        # The residual stream runs in the compute dtype, as OLMo's does under autocast (§1.7).
        x = self.embed_tokens(input_ids).astype(self.options.dtype)  # [B, T, D]
        rope = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        for layer in self.layers:
            x, _ = layer(x, rope)
        return layer_norm(x, self.config.layer_norm_eps)

    def logits(self, hidden: Array) -> Array:
        """[..., D] → [..., V] float32. Operands in the compute dtype, accumulation and result in fp32.

        OLMo rounds bf16 logits before its fp32 cross-entropy (§1.7); we keep the fp32 accumulator instead,
        which is at least as accurate.
        """
        if self.config.weight_tying:
            return project(hidden, self.embed_tokens.embedding.T, jnp.dtype(self.options.dtype))
        return self.lm_head(hidden)

    def decode(
        self, input_ids: Array, positions: Array, cache: list[KVCache], cache_index: Array, key_mask: Array,
        last_only: bool = False,
    ) -> tuple[Array, list[KVCache]]:
        """One prefill or decode call with a preallocated KV cache (olmo_jax/generate.py).

        input_ids, positions: [B, T]; cache: one ([B, S, K, H], [B, S, K, H]) per layer; cache_index: the slot of
        the first input token; key_mask: [B, S], False for padding slots. Returns logits [B, T, V] and the cache;
        with last_only, logits [B, 1, V] of the last position, all a prefill needs (XLA does not drop the others).
        """
        x = self.embed_tokens(input_ids).astype(self.options.dtype)
        rope = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x, layer_cache = layer(x, rope, layer_cache, cache_index, key_mask)
            new_cache.append(layer_cache)
        if last_only:
            x = x[:, -1:]
        return self.logits(layer_norm(x, self.config.layer_norm_eps)), new_cache


def init_params(config: ModelConfig, key: Array) -> dict[str, Any]:
    """Random parameters (fp32) for `config`, drawn as OLMo's `init_fn` prescribes (the same whatever the
    RunOptions the model later runs with)."""
    return OLMo(config).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def param_shapes(config: ModelConfig) -> dict[str, Any]:
    """The parameter tree as ShapeDtypeStructs, without allocating anything."""
    return jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))
