"""Content checksums of array trees: recorded in each checkpoint's meta when it is saved, verified when it is
restored, so a damaged array file (truncated, or bytes flipped in place) is refused instead of resumed from.

Each array's checksum is two 32-bit sums over its elements of a murmur3-mixed function of (the element's bits, its
flat index). Integer sums wrap and are exact, so the result does not depend on how the array is sharded, on the
mesh or on the order XLA reduces in: a checkpoint saved on 8 devices verifies when restored on 1. Any change of
elements changes a sum except with probability about 2^-64. The sums run on the devices, one jitted pass per array
(memory-bound; its temporaries, about twice the array, exist for one array at a time); only 8 bytes per array
reach the host.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from olmo_jax.parallel.mesh import to_host

_SEEDS = ((0x9E3779B1, 0x7F4A7C15), (0x2545F491, 0x68E31DA4))


def _fmix(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finaliser: a bijection that spreads every input bit over the output."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _bits(x: jax.Array) -> jax.Array:
    """The array's elements as uint32 bit patterns (narrower types widened)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if size == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    if size == 1:
        return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
    raise TypeError(f"no checksum for dtype {x.dtype}")


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """Each element's row-major flat index (mod 2^32), built from iotas so that sharded arrays need no gather."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride % 2**32)
        stride *= shape[dim]
    return index


@jax.jit
def _sum(x: jax.Array) -> jax.Array:
    """[2] uint32: one array's two sums."""
    bits, index = _bits(x), _flat_index(x.shape)
    return jnp.stack([jnp.sum(_fmix(bits ^ _fmix(index * jnp.uint32(a) + jnp.uint32(b))), dtype=jnp.uint32)
                      for a, b in _SEEDS])


@jax.jit
def _stack(sums: list[jax.Array]) -> jax.Array:
    return jnp.stack(sums) if sums else jnp.zeros((0, 2), jnp.uint32)


def _sums(leaves: list[jax.Array]) -> jax.Array:
    """[leaves, 2] uint32, one jitted pass per array: the temporaries of a pass (about twice its array) exist for
    one array at a time, not for the whole state at once (which would need twice the state's memory)."""
    return _stack([_sum(x) for x in leaves])


def checksums(tree: Any) -> dict[str, str]:
    """Each array of `tree` (jax or numpy, sharded or not) → a 16-hex-digit checksum, keyed by its tree path."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    sums = np.asarray(to_host(_sums([leaf for _, leaf in flat])), np.uint32)
    return {jax.tree_util.keystr(path): f"{int(s[0]):08x}{int(s[1]):08x}"
            for (path, _), s in zip(flat, sums, strict=True)}


def mismatched(tree: Any, recorded: dict[str, str]) -> list[str]:
    """The paths of `tree`'s arrays whose checksum differs from the recorded one (paths not recorded are not
    checked)."""
    actual = checksums(tree)
    return sorted(k for k, v in recorded.items() if actual.get(k) != v)
