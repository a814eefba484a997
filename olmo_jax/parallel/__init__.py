"""Running over many devices and processes: the mesh and the FSDP / data-parallel shardings, the start of JAX's
distributed runtime, and the XLA flags added on GPUs."""

from olmo_jax.lazy import lazy_exports

_EXPORTS = {
    "MeshConfig": "config", "DistributedConfig": "config",
    "make_mesh": "mesh", "tree_shardings": "mesh", "batch_sharding": "mesh",
    "to_host": "mesh",
    "initialize": "distributed",
    "apply_recommended_flags": "xla_flags",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
