"""Data parallelism and FSDP on JAX's own SPMD machinery: one mesh, named shardings, XLA does the collectives.

The mesh has axes `data` and `fsdp`. Every large array (parameters and the Adam moments that mirror them) is split
over `fsdp` along one dimension and replicated over `data`; the batch is split over both axes together, so each
device trains on its own rows. On one device every sharding is trivial and nothing changes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")
# Arrays smaller than this stay replicated: splitting them saves nothing and costs a collective.
MIN_SHARDED_SIZE = 2**10


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; -1 means "all the devices the other axis leaves"."""

    data: int = -1
    fsdp: int = 1

    def __post_init__(self) -> None:
        if self.data == -1 and self.fsdp == -1:
            raise ValueError("mesh.data and mesh.fsdp cannot both be -1; set one of them.")
        for name in ("data", "fsdp"):
            value = getattr(self, name)
            if value != -1 and value < 1:
                raise ValueError(f"mesh.{name}={value} must be ≥ 1 or -1 (the rest of the devices).")

    def shape(self, n_devices: int) -> tuple[int, int]:
        data, fsdp = self.data, self.fsdp
        if data == -1:
            data = n_devices // fsdp if n_devices % fsdp == 0 else 0
        if fsdp == -1:
            fsdp = n_devices // data if n_devices % data == 0 else 0
        if data * fsdp != n_devices:
            raise ValueError(
                f"mesh.data={self.data} × mesh.fsdp={self.fsdp} does not fit the {n_devices} devices; their product "
                f"must equal the device count (use -1 for one axis to take the rest)."
            )
        return data, fsdp


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
