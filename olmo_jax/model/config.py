"""What a model is and how it runs, as two configs.

`ModelConfig` is the architecture: OLMo's `ModelConfig` fields that the OLMo-1 family uses (sizes, vocabulary,
tying, RoPE base, clip_qkv, LayerNorm epsilon, initialisation, eos/pad ids). A checkpoint records it and a resumed
run must match it. It has no defaults: configs/1b.py holds OLMo-1B's values, a checkpoint or an HF config.json the
others, so there is one place each value comes from.

`RunOptions` is how the model runs here (compute dtype, attention implementation, rematerialisation). It changes no
parameter and no result beyond rounding, so whoever runs the model chooses it (the train config's `precision`,
`model.attention_impl` and `model.remat`; `--dtype` and `--attention_impl` of eval and generate), and it is never
saved with or restored from a checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from olmo_jax.errors import ConfigError

InitFn = Literal["mitchell", "normal", "full_megatron"]
Remat = Literal["none", "save_matmuls", "full"]
AttentionImpl = Literal["auto", "xla", "cudnn"]
ComputeDtype = Literal["float32", "bfloat16"]

# Fields that checkpoints written before the split of RunOptions from ModelConfig carry in their model record.
LEGACY_RUN_FIELDS = ("compute_dtype", "attention_impl", "remat")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The OLMo-1 architecture (docs/olmo_facts.md §0-§2); configs/1b.py gives OLMo-1B's values.

    Covers OLMo-1B (tied, 2048 context), OLMo-1B-0724 and OLMo-7B(-0424/-0724) (untied embeddings, `clip_qkv`,
    4096 context). No biases and no LayerNorm parameters exist in any of them.
    """

    d_model: int
    n_heads: int
    n_kv_heads: int | None  # None → n_heads (multi-head attention)
    n_layers: int
    mlp_ratio: int
    mlp_hidden_size: int | None  # OLMo's sense: the ff_proj width (value + gate); None → mlp_ratio × d_model
    max_sequence_length: int
    vocab_size: int  # the tokenizer's size; token ids must be below it
    embedding_size: int | None  # rows of the embedding (vocab padded to a multiple of 128); None → vocab_size
    weight_tying: bool
    rope_theta: float
    clip_qkv: float | None
    layer_norm_eps: float
    init_fn: InitFn
    init_std: float
    init_cutoff_factor: float | None
    emb_init_std: float | None
    eos_token_id: int
    pad_token_id: int

    def __post_init__(self) -> None:
        problems = []
        for name in ("d_model", "n_heads", "n_layers", "mlp_ratio", "max_sequence_length", "vocab_size"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive")
        if problems:
            raise ConfigError("Invalid model config: " + "; ".join(problems) + ".")
        if self.d_model % self.n_heads:
            problems.append(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            problems.append(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if self.d_model % self.n_heads == 0 and self.head_dim % 2:
            problems.append(f"head dim d_model/n_heads={self.head_dim} must be even for RoPE")
        if self.mlp_hidden_size is not None and (self.mlp_hidden_size <= 0 or self.mlp_hidden_size % 2):
            problems.append(f"mlp_hidden_size={self.mlp_hidden_size} must be a positive even number (value + gate)")
        if self.padded_vocab < self.vocab_size:
            problems.append(f"embedding_size={self.embedding_size} must be ≥ vocab_size={self.vocab_size}")
        for name in ("eos_token_id", "pad_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                problems.append(f"{name}={getattr(self, name)} must be in [0, vocab_size={self.vocab_size})")
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            problems.append(f"clip_qkv={self.clip_qkv} must be positive or None")
        if self.init_fn not in InitFn.__args__:
            problems.append(f"init_fn={self.init_fn!r} must be one of {list(InitFn.__args__)}")
        if problems:
            raise ConfigError("Invalid model config: " + "; ".join(problems) + ".")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ModelConfig:
        """The config from a checkpoint's model record; records written before RunOptions existed also hold
        compute_dtype, attention_impl and remat, which are how that run ran, not part of the model."""
        fields = {k: v for k, v in record.items() if k not in LEGACY_RUN_FIELDS}
        try:
            return cls(**fields)
        except TypeError as e:
            raise ConfigError(f"A model record {sorted(record)} is not an OLMo model config ({e}).") from None

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
        """F: the SwiGLU inner size (docs/olmo_facts.md §1.5: half of OLMo's ff_proj output)."""
        return (self.mlp_hidden_size or self.mlp_ratio * self.d_model) // 2

    def num_params(self) -> int:
        """All parameters, counted from the shapes (the tied output projection counted once)."""
        d, f = self.d_model, self.mlp_inner
        attn = d * d * 2 + 2 * d * self.kv_heads * self.head_dim
        embeddings = self.padded_vocab * d * (1 if self.weight_tying else 2)
        return embeddings + self.n_layers * (attn + 3 * d * f)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, 6N + 12·L·d·s (the PaLM-style MFU convention; not OLMo's own count, §9)."""
        s = seq_len or self.max_sequence_length
        return 6 * self.num_params() + 12 * self.n_layers * self.d_model * s


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a model runs: the defaults are plain fp32 on XLA with nothing recomputed; training takes all three from
    its config, eval and generate from their flags."""

    dtype: ComputeDtype = "float32"  # "bfloat16" is OLMo's amp_bf16; parameters stay fp32 either way
    attention_impl: AttentionImpl = "auto"  # "auto": cuDNN flash attention on a GPU in bf16, XLA elsewhere
    remat: Remat = "none"  # per-block rematerialisation policy (olmo_jax.model.transformer.REMAT_POLICIES)

    def __post_init__(self) -> None:
        choices = {"dtype": ComputeDtype, "attention_impl": AttentionImpl, "remat": Remat}
        problems = [f"{name}={getattr(self, name)!r} must be one of {list(literal.__args__)}"
                    for name, literal in choices.items() if getattr(self, name) not in literal.__args__]
        if problems:
            raise ConfigError("Invalid run options: " + "; ".join(problems) + ".")
