"""Next-token cross-entropy computed chunk by chunk, so that a microbatch's full fp32 logits never exist at once.

For OLMo-1B a 8 × 2048 microbatch has 8·2048·50,304 fp32 logits (3.3 GB, twice that with their gradient). We project
the final hidden states to logits `chunk` positions at a time inside a rematerialised scan: the backward pass
recomputes each chunk's logits instead of storing them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from olmo_jax.model.transformer import OLMo

Array = jax.Array


class LossSums(NamedTuple):
    """Sums over target tokens; divide by the number of targets for means."""

    ce: Array  # Σ cross-entropy
    z: Array  # Σ logsumexp² (OLMo's z-loss before its 1e-4 weight)


def chunk_length(seq_len: int, chunk: int) -> int:
    """The largest divisor of seq_len that is ≤ chunk (so the positions split evenly)."""
    return max(c for c in range(1, min(chunk, seq_len) + 1) if seq_len % c == 0)


def next_token_losses(model: OLMo, params: Any, input_ids: Array, chunk: int) -> tuple[Array, Array]:
    """Per-position cross-entropy and logsumexp, both [B, T], of predicting input_ids[:, t+1] at position t.

    The last position has no target: its values are to be ignored. Logits are made `chunk` positions at a time, each
    chunk's recomputed in the backward pass rather than kept.
    """
    b, t = input_ids.shape
    hidden = model.apply({"params": params}, input_ids, method=OLMo.hidden_states)  # [B, T, D] fp32
    targets = jnp.concatenate([input_ids[:, 1:], jnp.zeros((b, 1), input_ids.dtype)], axis=1)  # [B, T]
    c = chunk_length(t, chunk)

    def chunk_losses(args: tuple[Array, Array]) -> tuple[Array, Array]:
        h, y = args  # [B, c, D], [B, c]
        logits = model.apply({"params": params}, h, method=OLMo.logits)  # [B, c, V] fp32
        lse = jax.nn.logsumexp(logits, axis=-1)  # [B, c]
        return lse - jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0], lse

    if c < t:  # with one chunk there is nothing to save by recomputing
        chunk_losses = jax.checkpoint(chunk_losses)

    def split(x: Array) -> Array:  # [B, T, ...] → [T/c, B, c, ...]: chunks along time keep B sharded
        return jnp.moveaxis(x.reshape(b, t // c, c, *x.shape[2:]), 1, 0)

    def merge(x: Array) -> Array:  # [T/c, B, c] → [B, T]
        return jnp.moveaxis(x, 0, 1).reshape(b, t)

    ce, lse = jax.lax.map(chunk_losses, (split(hidden), split(targets)))
    return merge(ce), merge(lse)


def next_token_loss_sums(model: OLMo, params: Any, input_ids: Array, chunk: int) -> LossSums:
    """Σ CE and Σ logsumexp² over every next-token target of input_ids [B, T] (B·(T−1) targets: every token but the
    first is a target, EOS included, as in OLMo-1B's training, docs/olmo_facts.md §3.1)."""
    ce, lse = next_token_losses(model, params, input_ids, chunk)
    return LossSums(ce[:, :-1].sum(), jnp.square(lse[:, :-1]).sum())
