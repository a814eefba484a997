"""The OLMo-1 model family in Flax linen: numerically the same model as allenai/OLMo and HF `OlmoForCausalLM`.

Read top to bottom: the config, then norm → attention → MLP → block → model (RoPE and the attention computation
itself are in `olmo_jax/attention.py`). Parameter names follow Hugging Face's OLMo modules (`embed_tokens`,
`layers_N/self_attn/q_proj`, `mlp/gate_proj`, `lm_head`), so HF conversion is a name table plus transposes
(`olmo_jax/hf.py`). Facts cite `olmo_spec.md` sections.

Dimension letters: B batch, T query time, S key/value time, D d_model, N query heads, K key/value heads,
H head dim, F SwiGLU inner size (HF `intermediate_size`), V padded vocabulary (`embedding_size`).

Projections run on rows flattened to [B·T, D] ("flat matmuls"): the same math, but XLA:CPU's backward pass of a 2-D
matmul is ~1.6× faster than that of a [B, T, D] one (README, "Performance"); on a GPU the reshape is free.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from olmo_jax.attention import Rope, apply_rope, attention_impl, causal_attention, rope_tables

Array = jax.Array
InitFn = Literal["mitchell", "normal", "full_megatron"]
Remat = Literal["none", "save_matmuls", "full"]
AttentionImpl = Literal["auto", "xla", "cudnn"]
ComputeDtype = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """OLMo's `ModelConfig` fields that the OLMo-1 family uses; defaults are OLMo-1B (olmo_spec.md §0).

    OLMo-family checkpoints covered: OLMo-1B (tied, 2048 context), OLMo-1B-0724 and OLMo-7B(-0424/-0724)
    (untied embeddings, `clip_qkv`, 4096 context). No biases and no LayerNorm parameters exist in any of them.
    """

    d_model: int = 2048
    n_heads: int = 16
    n_kv_heads: int | None = None  # None → n_heads (multi-head attention).
    n_layers: int = 16
    mlp_ratio: int = 8
    # OLMo's sense: the ff_proj output size (value + gate), so the SwiGLU inner size F is half of it.
    mlp_hidden_size: int | None = None
    max_sequence_length: int = 2048
    vocab_size: int = 50280  # The tokenizer's size; token ids must be below it.
    embedding_size: int | None = 50304  # Rows of the embedding (vocab padded to a multiple of 128); None → vocab.
    weight_tying: bool = True
    rope_theta: float = 10_000.0
    clip_qkv: float | None = None
    layer_norm_eps: float = 1e-5
    init_fn: InitFn = "mitchell"
    init_std: float = 0.02
    init_cutoff_factor: float | None = None
    emb_init_std: float | None = None
    eos_token_id: int = 50279
    pad_token_id: int = 1
    # Not OLMo fields: how the model runs here.
    compute_dtype: ComputeDtype = "float32"  # "bfloat16" matches OLMo's amp_bf16; parameters are always fp32.
    attention_impl: AttentionImpl = "auto"  # "auto" → cuDNN flash attention on GPU in bf16, XLA elsewhere.
    remat: Remat = "none"  # Per-block rematerialisation policy (olmo_jax.model.REMAT_POLICIES).

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_model", "n_heads", "n_layers", "mlp_ratio", "max_sequence_length", "vocab_size"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            problems.append(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            problems.append(f"head dim d_model/n_heads={self.head_dim} must be even for RoPE")
        if self.mlp_hidden_size is not None and (self.mlp_hidden_size <= 0 or self.mlp_hidden_size % 2):
            problems.append(f"mlp_hidden_size={self.mlp_hidden_size} must be a positive even number (value + gate)")
        if self.padded_vocab < self.vocab_size:
            problems.append(f"embedding_size={self.embedding_size} must be ≥ vocab_size={self.vocab_size}")
        if not 0 <= self.eos_token_id < self.vocab_size or not 0 <= self.pad_token_id < self.vocab_size:
            problems.append(
                f"eos_token_id={self.eos_token_id} and pad_token_id={self.pad_token_id} must be < vocab_size"
            )
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            problems.append(f"clip_qkv={self.clip_qkv} must be positive or None")
        choices = {
            "init_fn": InitFn, "remat": Remat, "attention_impl": AttentionImpl, "compute_dtype": ComputeDtype,
        }
        for name, literal in choices.items():
            if getattr(self, name) not in literal.__args__:
                problems.append(f"{name}={getattr(self, name)!r} must be one of {list(literal.__args__)}")
        if problems:
            raise ValueError("Invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def padded_vocab(self) -> int:
        return self.embedding_size or self.vocab_size

    @property
    def mlp_inner(self) -> int:
        """F: the SwiGLU inner size (olmo_spec.md §1.5: half of OLMo's ff_proj output)."""
        return (self.mlp_hidden_size or self.mlp_ratio * self.d_model) // 2

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.compute_dtype)

    def num_params(self) -> int:
        """All parameters, counted from the shapes (the tied output projection counted once)."""
        d, f = self.d_model, self.mlp_inner
        attn = d * d * 2 + 2 * d * self.kv_heads * self.head_dim
        embeddings = self.padded_vocab * d * (1 if self.weight_tying else 2)
        return embeddings + self.n_layers * (attn + 3 * d * f)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, 6N + 12·L·d·s (the PaLM-style MFU convention; not OLMo's own count)."""
        s = seq_len or self.max_sequence_length
        return 6 * self.num_params() + 12 * self.n_layers * self.d_model * s


def truncated_normal(std: float, cutoff: float | None) -> Callable[..., Array]:
    """N(0, std²), redrawn outside ±cutoff·std, without variance correction, as torch's trunc_normal_ (§2)."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        if cutoff is None:
            return std * jax.random.normal(key, shape, dtype)
        return std * jax.random.truncated_normal(key, -cutoff, cutoff, shape, dtype)

    return init


def init_stds(config: ModelConfig, layer_id: int) -> dict[str, float]:
    """Init std of each weight kind for block `layer_id` (0-based), per `init_fn` (olmo_spec.md §2.1-§2.3)."""
    d, f = config.d_model, config.mlp_inner
    if config.init_fn == "mitchell":
        return {
            "embed": config.emb_init_std or 1 / math.sqrt(d),
            "in_proj": 1 / math.sqrt(d),  # att_proj and ff_proj
            "o_proj": 1 / math.sqrt(2 * d * (layer_id + 1)),  # depth scaling uses the 1-based layer
            "down_proj": 1 / math.sqrt(2 * f * (layer_id + 1)),
            "lm_head": 1 / math.sqrt(d),
        }
    if config.init_fn == "normal":
        s = config.init_std
        return {"embed": config.emb_init_std or s, "in_proj": s, "o_proj": s, "down_proj": s, "lm_head": s}
    out = config.init_std / math.sqrt(2 * config.n_layers)  # full_megatron
    return {
        "embed": config.emb_init_std or config.init_std, "in_proj": config.init_std,
        "o_proj": out, "down_proj": out, "lm_head": 1 / math.sqrt(d),
    }


def init_cutoff(config: ModelConfig) -> float | None:
    """`normal` is untruncated unless a cutoff is set; the others truncate at ±3σ by default (§2)."""
    if config.init_fn == "normal":
        return config.init_cutoff_factor
    return config.init_cutoff_factor or 3.0


def layer_norm(x: Array, eps: float) -> Array:
    """Non-parametric LayerNorm computed in fp32; the output stays fp32, as under torch autocast (§1.3)."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


KVCache = tuple[Array, Array]  # ([B, S, K, H], [B, S, K, H]) for one layer


def projection(config: ModelConfig, features: int, std: float, name: str | None = None) -> nn.Dense:
    """A bias-free Linear with fp32 parameters computing in the compute dtype, initialised as OLMo does."""
    return nn.Dense(features, use_bias=False, dtype=config.dtype, param_dtype=jnp.float32, name=name,
                    kernel_init=truncated_normal(std, init_cutoff(config)))


class Attention(nn.Module):
    config: ModelConfig
    layer_id: int

    def setup(self) -> None:
        c = self.config
        stds = init_stds(c, self.layer_id)
        self.q_proj = projection(c, c.n_heads * c.head_dim, stds["in_proj"])
        self.k_proj = projection(c, c.kv_heads * c.head_dim, stds["in_proj"])
        self.v_proj = projection(c, c.kv_heads * c.head_dim, stds["in_proj"])
        self.o_proj = projection(c, c.d_model, stds["o_proj"])

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
            out = causal_attention(q, k, v, attention_impl(c))
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
    layer_id: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """SwiGLU: down(silu(gate(x)) · up(x)). OLMo's ff_proj rows [0, F) are `up`, [F, 2F) `gate` (§1.5)."""
        c = self.config
        stds = init_stds(c, self.layer_id)
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [B·T, D]: flat matmuls (module docstring)
        gate = projection(c, c.mlp_inner, stds["in_proj"], "gate_proj")(x)  # [B·T, F]
        up = projection(c, c.mlp_inner, stds["in_proj"], "up_proj")(x)  # [B·T, F]
        return projection(c, c.d_model, stds["down_proj"], "down_proj")(nn.silu(gate) * up).reshape(shape)


class Block(nn.Module):
    """Pre-norm sequential block: x + attn(LN(x)), then x + mlp(LN(x)) (§1.2)."""

    config: ModelConfig
    layer_id: int

    @nn.compact
    def __call__(
        self, x: Array, rope: Rope, cache: KVCache | None = None, cache_index: Array | None = None,
        key_mask: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        c = self.config
        attn, cache = Attention(c, self.layer_id, name="self_attn")(
            layer_norm(x, c.layer_norm_eps), rope, cache, cache_index, key_mask
        )
        x = x + attn.astype(x.dtype)
        x = x + MLP(c, self.layer_id, name="mlp")(layer_norm(x, c.layer_norm_eps)).astype(x.dtype)
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

    @nn.compact
    def __call__(self, hidden: Array) -> Array:
        c = self.config
        init = truncated_normal(init_stds(c, 0)["lm_head"], init_cutoff(c))
        kernel = self.param("kernel", init, (c.d_model, c.padded_vocab), jnp.float32)
        return project(hidden, kernel, c.dtype)


class OLMo(nn.Module):
    """`OLMo(config).apply({"params": params}, input_ids)` → fp32 logits [B, T, V] over the padded vocabulary."""

    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        stds, cutoff = init_stds(c, 0), init_cutoff(c)
        self.embed_tokens = nn.Embed(
            c.padded_vocab, c.d_model, param_dtype=jnp.float32, embedding_init=truncated_normal(stds["embed"], cutoff)
        )
        block = Block if c.remat == "none" else nn.remat(Block, policy=REMAT_POLICIES[c.remat])
        self.layers = [block(c, i, name=f"layers_{i}") for i in range(c.n_layers)]
        if not c.weight_tying:
            self.lm_head = LMHead(c, name="lm_head")

    def __call__(self, input_ids: Array, positions: Array | None = None) -> Array:
        """input_ids: [B, T] int → logits [B, T, V] float32."""
        return self.logits(self.hidden_states(input_ids, positions))

    def hidden_states(self, input_ids: Array, positions: Array | None = None) -> Array:
        """input_ids: [B, T] → the final normed hidden states [B, T, D] (fp32), before the output projection.

        The train step projects these to logits chunk by chunk (olmo_jax/loss.py) so that a microbatch's full
        fp32 logits never exist at once.
        """
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        # The residual stream runs in the compute dtype, as OLMo's does under autocast (§1.7).
        x = self.embed_tokens(input_ids).astype(self.config.dtype)  # [B, T, D]
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
            return project(hidden, self.embed_tokens.embedding.T, self.config.dtype)
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
        x = self.embed_tokens(input_ids).astype(self.config.dtype)
        rope = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        new_cache = []
        for layer, layer_cache in zip(self.layers, cache, strict=True):
            x, layer_cache = layer(x, rope, layer_cache, cache_index, key_mask)
            new_cache.append(layer_cache)
        if last_only:
            x = x[:, -1:]
        return self.logits(layer_norm(x, self.config.layer_norm_eps)), new_cache


def init_params(config: ModelConfig, key: Array) -> dict[str, Any]:
    """Random parameters (fp32) for `config`, drawn as OLMo's `init_fn` prescribes."""
    return OLMo(config).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def param_shapes(config: ModelConfig) -> dict[str, Any]:
    """The parameter tree as ShapeDtypeStructs, without allocating anything."""
    return jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))
