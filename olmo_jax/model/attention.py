"""Rotary position embeddings and causal self-attention for the transformer: which implementation runs where
(cuDNN flash attention on an NVIDIA GPU in bf16, our query-blocked XLA attention elsewhere), and both computations.

Dimension letters as in olmo_jax/model/transformer.py: B batch, T time, N query heads, K key/value heads, H head
dim. § numbers cite docs/olmo_facts.md.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from olmo_jax.errors import ConfigError
from olmo_jax.model.config import RunOptions

Array = jax.Array


Rope = tuple[Array, Array]  # cos, sin: [B, T, 1, H] fp32


def rope_tables(positions: Array, head_dim: int, theta: float) -> Rope:
    """cos and sin of each position's rotary angles in HF's rotate-half layout (§1.4); positions: [B, T] integers.

    Made once per forward pass and shared by every layer: XLA fuses trigonometry into its consumers, so tables made
    inside each attention layer were recomputed for every head of q and of k, in every layer.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # [H/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, H]
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, rope: Rope) -> Array:
    """Rotary embedding on all head dims, computed in fp32 (§1.4). x: [B, T, N, H]; returns x's dtype."""
    cos, sin = rope
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def attention_impl(options: RunOptions, backend: str | None = None) -> Literal["xla", "cudnn"]:
    """The attention implementation `options` run with on `backend` (default: JAX's default backend).

    cuDNN flash attention needs an NVIDIA GPU and bf16 inputs, so "auto" picks it only there; an explicit "cudnn"
    anywhere else is a ConfigError naming the fix (JAX itself only says "cuDNN is not detected" from deep inside
    the trace).
    """
    backend = backend or jax.default_backend()
    fits_cudnn = backend == "gpu" and options.dtype == "bfloat16"
    if options.attention_impl == "auto":
        return "cudnn" if fits_cudnn else "xla"
    if options.attention_impl == "cudnn" and not fits_cudnn:
        raise ConfigError(
            f"attention_impl='cudnn' (cuDNN flash attention) needs an NVIDIA GPU and bf16 compute, but JAX's backend "
            f"is {backend!r} and the compute dtype {options.dtype!r}. Use attention_impl 'auto' (cuDNN on a GPU in "
            "bf16, XLA elsewhere) or 'xla' (--config.model.attention_impl, or --attention_impl of eval and "
            "generate), or run in bf16 on a GPU."
        )
    return options.attention_impl


def causal_attention(q: Array, k: Array, v: Array, impl: Literal["xla", "cudnn"], block: int = 128) -> Array:
    """Causal self-attention: q [B, T, N, H], k and v [B, T, K, H] → [B, T, N, H].

    "cudnn" is cuDNN's flash attention. "xla" is written out here instead of calling
    `jax.nn.dot_product_attention(implementation="xla")`, with the same numerics (fp32 scores and softmax,
    probabilities cast to v's dtype) but less work: queries go in blocks of `block` positions (at most 8 blocks),
    each attending only to keys up to its last position, so most of the masked upper triangle is never computed;
    heads move in front of time once and a group's query heads become more query rows, so each product is a plain
    4-D batched matmul; and `jax.nn.softmax` brings its own lean derivative rule. `tools/bench_attention.py` times it
    against the generic path and torch's SDPA (docs/performance.md).
    """
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
    b, t, n, h = q.shape
    kv = k.shape[2]
    # [B, K, G, T, H] queries (G query heads share each key/value head), [B, K, T, H] keys and values.
    q = jnp.moveaxis(q.reshape(b, t, kv, n // kv, h), 1, 3)
    k, v = jnp.moveaxis(k, 1, 2), jnp.moveaxis(v, 1, 2)
    scale = jnp.float32(h**-0.5)  # applied to the fp32 scores, as jax.nn.dot_product_attention does
    block = max(block, -(-t // 8))
    outs = []
    g = n // kv
    for start in range(0, t, block):
        end = min(start + block, t)
        rows = q[:, :, :, start:end].reshape(b, kv, g * (end - start), h)  # a group's heads as more query rows
        scores = jnp.einsum("bkqh,bksh->bkqs", rows, k[:, :, :end],
                            preferred_element_type=jnp.float32) * scale  # [B, K, G·(end − start), end]
        causal = jnp.tile(jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None], (g, 1))
        probs = jax.nn.softmax(jnp.where(causal, scores, jnp.finfo(jnp.float32).min), axis=-1)
        out = jnp.einsum("bkqs,bksh->bkqh", probs.astype(v.dtype), v[:, :, :end])
        outs.append(out.reshape(b, kv, g, end - start, h))
    out = jnp.concatenate(outs, axis=3)  # [B, K, G, T, H]
    return jnp.moveaxis(out, 3, 1).reshape(b, t, n, h)
