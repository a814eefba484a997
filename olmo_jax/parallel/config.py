"""The `mesh` and `distributed` sections of a run's config (docs/scaling-out.md); configs/1b.py gives every value."""

from __future__ import annotations

import dataclasses

from olmo_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; -1 means "all the devices the other axis leaves"."""

    data: int
    fsdp: int

    def __post_init__(self) -> None:
        if self.data == -1 and self.fsdp == -1:
            raise ConfigError("mesh.data and mesh.fsdp cannot both be -1; set one of them.")
        for name in ("data", "fsdp"):
            value = getattr(self, name)
            if value != -1 and value < 1:
                raise ConfigError(f"mesh.{name}={value} must be ≥ 1 or -1 (the rest of the devices).")

    def shape(self, n_devices: int) -> tuple[int, int]:
        data, fsdp = self.data, self.fsdp
        if data == -1:
            data = n_devices // fsdp if n_devices % fsdp == 0 else 0
        if fsdp == -1:
            fsdp = n_devices // data if n_devices % data == 0 else 0
        if data * fsdp != n_devices:
            raise ConfigError(
                f"mesh.data={self.data} × mesh.fsdp={self.fsdp} does not fit the {n_devices} devices; their product "
                f"must equal the device count (use -1 for one axis to take the rest, e.g. --config.mesh.data=-1)."
            )
        return data, fsdp


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """`enabled`: None (auto) initialises when a coordinator is given or a Slurm / Open MPI job of several tasks is
    detected; True always (cluster auto-detection fills what is unset); False never."""

    enabled: bool | None
    coordinator_address: str | None  # host:port of process 0
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None  # e.g. (0, 1, 2, 3, 4, 5, 6, 7) for one task per 8-GPU node
    heartbeat_timeout_seconds: int  # a process silent this long is lost: the others stop (docs/failure-modes.md)
    shutdown_timeout_seconds: int  # how long the processes wait for each other when they finish

    def __post_init__(self) -> None:
        if self.heartbeat_timeout_seconds < 2 or self.shutdown_timeout_seconds < 1:
            raise ConfigError(f"distributed.heartbeat_timeout_seconds={self.heartbeat_timeout_seconds} must be ≥ 2 and "
                              f"shutdown_timeout_seconds={self.shutdown_timeout_seconds} ≥ 1.")
        if self.coordinator_address is not None and (self.num_processes is None or self.process_id is None):
            raise ConfigError(
                f"distributed.coordinator_address={self.coordinator_address!r} needs distributed.num_processes and "
                "distributed.process_id as well (or leave all three unset for Slurm / Open MPI auto-detection)."
            )
