"""Starting JAX's distributed runtime for multi-process (multi-host) runs, before any other JAX call.

One process per host (or per GPU) runs the same command. `jax.distributed.initialize` connects them through a
coordinator; afterwards `jax.devices()` lists every device of every process and jitted code runs SPMD over all of
them. Trap (docs/jax_notes.md §3): Slurm / Open MPI auto-detection gives each process ONE local GPU unless
`local_device_ids` is passed, so either launch one task per GPU or set `distributed.local_device_ids`.
"""

from __future__ import annotations

import os

import jax

from olmo_jax.errors import DistributedError
from olmo_jax.parallel.config import DistributedConfig


def cluster_detected() -> str | None:
    """The launcher of a multi-task job step, if any ("slurm" or "openmpi").

    Slurm counts only inside an `srun` step of several tasks (what JAX's own detection reads): a plain `python ...`
    in an `sbatch` script of several tasks is one process and must not wait for the others.
    """
    slurm_step = {"SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID"} <= set(os.environ)
    if slurm_step and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "slurm"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    return None


def initialize(config: DistributedConfig) -> bool:
    """Call jax.distributed.initialize when `config` asks for it; returns whether the runtime is distributed."""
    wanted = config.enabled is True or (
        config.enabled is None and (config.coordinator_address is not None or cluster_detected() is not None)
    )
    if not wanted:
        return False
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            local_device_ids=list(config.local_device_ids) if config.local_device_ids is not None else None,
        )
    except (ValueError, RuntimeError) as e:
        raise DistributedError(
            f"Could not start JAX's distributed runtime ({type(e).__name__}: {e}). Set "
            "distributed.coordinator_address, num_processes and process_id, launch with srun / mpirun, or set "
            "distributed.enabled=False for a single process."
        ) from e
    return True
