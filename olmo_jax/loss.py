"""Next-token cross-entropy computed chunk by chunk, so that a microbatch's full fp32 logits never exist at once.

For OLMo-1B a 8 × 2048 microbatch has 8·2048·50,304 fp32 logits (3.3 GB, twice that with their gradient). We project
the final hidden states to logits `chunk` positions at a time inside a rematerialised scan: the backward pass
recomputes each chunk's logits instead of storing them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from olmo_jax.model import OLMo

Array = jax.Array


class LossSums(NamedTuple):
    """Sums over target tokens; divide by the number of targets for means."""

    ce: Array  # Σ cross-entropy
    z: Array  # Σ logsumexp² (OLMo's z-loss before its 1e-4 weight)


def chunk_length(seq_len: int, chunk: int) -> int:
    """The largest divisor of seq_len that is ≤ chunk (so the positions split evenly)."""
    return max(c for c in range(1, min(chunk, seq_len) + 1) if seq_len % c == 0)


def next_token_loss_sums(model: OLMo, params: Any, input_ids: Array, chunk: int) -> LossSums:
    """Σ CE and Σ logsumexp² over every next-token target of input_ids [B, T] (B·(T−1) targets: every token but the
    first is a target, EOS included, as in OLMo-1B's training, olmo_spec.md §3.1)."""
    b, t = input_ids.shape
    hidden = model.apply({"params": params}, input_ids, method=OLMo.hidden_states)  # [B, T, D] fp32
    # Position t predicts token t+1; the last position has no target and gets weight 0.
    targets = jnp.concatenate([input_ids[:, 1:], jnp.zeros((b, 1), input_ids.dtype)], axis=1)  # [B, T]
    weights = jnp.broadcast_to(jnp.arange(t) < t - 1, (b, t)).astype(jnp.float32)  # [B, T]
    c = chunk_length(t, chunk)
    n = t // c

    def split(x: Array) -> Array:  # [B, T, ...] → [T/c, B, c, ...]: chunks along time keep B sharded
        return jnp.moveaxis(x.reshape(b, n, c, *x.shape[2:]), 1, 0)

    def chunk_sums(h: Array, y: Array, w: Array) -> tuple[Array, Array]:
        logits = model.apply({"params": params}, h, method=OLMo.logits)  # [B, c, V] fp32
        lse = jax.nn.logsumexp(logits, axis=-1)  # [B, c]
        target = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]  # [B, c]
        return ((lse - target) * w).sum(), (jnp.square(lse) * w).sum()

    if n > 1:  # recompute each chunk's logits in the backward pass rather than keep them all
        chunk_sums = jax.checkpoint(chunk_sums)

    def body(carry: tuple[Array, Array], xs: tuple[Array, Array, Array]) -> tuple[tuple[Array, Array], None]:
        ce, z = chunk_sums(*xs)
        return (carry[0] + ce, carry[1] + z), None

    zero = jnp.zeros((), jnp.float32)
    (ce, z), _ = jax.lax.scan(body, (zero, zero), (split(hidden), split(targets), split(weights)))
    return LossSums(ce, z)


def reference_loss_sums(model: OLMo, params: Any, input_ids: Array) -> LossSums:
    """The same sums from the full logits at once (for tests and for short sequences)."""
    logits = model.apply({"params": params}, input_ids)[:, :-1]  # [B, T−1, V]
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, input_ids[:, 1:, None], axis=-1)[..., 0]
    return LossSums((lse - target).sum(), jnp.square(lse).sum())
