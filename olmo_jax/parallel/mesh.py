"""Data parallelism and FSDP on JAX's own SPMD machinery: one mesh, named shardings, XLA does the collectives.

The mesh has axes `data` and `fsdp`. Every large array (parameters and the Adam moments that mirror them) is split
over `fsdp` along one dimension and replicated over `data`; the batch is split over both axes together, so each
device trains on its own rows. On one device every sharding is trivial and nothing changes.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from olmo_jax.parallel.config import MeshConfig

BATCH_AXES = ("data", "fsdp")
# Arrays smaller than this stay replicated: splitting them saves nothing and costs a collective.
MIN_SHARDED_SIZE = 2**10


def make_mesh(config: MeshConfig, devices: list[jax.Device] | None = None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    shape = config.shape(len(devices))
    return jax.make_mesh(shape, ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2, devices=devices)


def spec_for(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """Split the largest dimension that `fsdp` divides; small or indivisible arrays stay replicated."""
    if fsdp == 1 or math.prod(shape) < MIN_SHARDED_SIZE:
        return PartitionSpec()
    candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % fsdp == 0]
    if not candidates:
        return PartitionSpec()
    spec: list[str | None] = [None] * len(shape)
    spec[int(candidates[0])] = "fsdp"
    return PartitionSpec(*spec)


def tree_shardings(mesh: Mesh, abstract_tree: Any) -> Any:
    """NamedShardings for every array of a tree (parameters, optimizer state, train state) by the FSDP rule."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, spec_for(tuple(x.shape), fsdp)), abstract_tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are int32 [A, M, T]: the M rows of each microbatch are split over all devices."""
    return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES, None))


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying target shardings (what Orbax restores into)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, shardings)


def to_host(tree: Any) -> Any:
    """Every array of `tree` on the host as numpy, also an array spread over the devices of several processes
    (then every process receives the whole array). A device-to-host transfer: callers name why they need it."""

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)
