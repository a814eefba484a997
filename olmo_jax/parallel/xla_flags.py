"""XLA flags that the entry points add on NVIDIA GPUs, before JAX starts its backend; and how to turn them off.

XLA reads `XLA_FLAGS` once, when the backend initialises, so `apply_recommended_flags()` runs first thing in
`python -m olmo_jax.train` and `tools/benchmark.py`, before any JAX computation. A flag already named in the user's
`XLA_FLAGS` is left as the user set it, and `OLMO_JAX_XLA_FLAGS=0` turns the additions off altogether.

The list is short on purpose: XLA aborts the process on a flag it does not know ("Unknown flag in XLA_FLAGS"), flags
come and go between jaxlib versions (JAX's GPU performance tips say so), and a default should be one that has been
measured. Candidates wait in `CANDIDATE_GPU_FLAGS` until `tools/gpu_sweep.py` has A/B-tested them on a GPU.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Mapping, MutableMapping

DISABLE_ENV = "OLMO_JAX_XLA_FLAGS"  # "0" (or "false", "off", "no"): add nothing

RECOMMENDED_GPU_FLAGS: dict[str, str] = {
    # Lets XLA schedule collectives to overlap with compute: what FSDP and data parallelism over several GPUs need.
    # NVIDIA's JAX-Toolbox images set it by default (docs.nvidia.com/jax-toolbox/environment-variables); with one
    # GPU there are no collectives and it changes little.
    "xla_gpu_enable_latency_hiding_scheduler": "true",
}

# Flags worth A/B-testing on one GPU (docs/jax_notes.md §6), by the name the sweep reports.
CANDIDATE_GPU_FLAGS: dict[str, dict[str, str]] = {
    # cuBLAS for every GEMM instead of autotuning Triton GEMMs against it: JAX-Toolbox's former default; compiles
    # faster, and it is the question whether XLA's Triton GEMMs win for OLMo-1B's shapes.
    "cublas_gemms": {"xla_gpu_enable_triton_gemm": "false"},
    # No CUDA graphs: command buffers cut launch overhead for many small kernels, but cost capture time and memory.
    "no_command_buffers": {"xla_gpu_enable_command_buffer": ""},
}

_FLAG_NAME = re.compile(r"--([A-Za-z0-9_]+)")
_CUDA_PLUGIN = re.compile(r"jax[-_]cuda\d+[-_](plugin|pjrt)")


def flag_names(xla_flags: str) -> set[str]:
    """The flag names set in an XLA_FLAGS string ("--a=1 --b" → {"a", "b"})."""
    return set(_FLAG_NAME.findall(xla_flags))


def merge_flags(xla_flags: str, flags: Mapping[str, str]) -> tuple[str, list[str]]:
    """Append `flags` to an XLA_FLAGS string, except those it already names; returns the string and the added."""
    present = flag_names(xla_flags)
    added = [f"--{name}={value}" for name, value in flags.items() if name not in present]
    return " ".join([xla_flags.strip(), *added]).strip(), added


def gpu_expected(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether JAX will run on an NVIDIA GPU, decided without starting a backend: `JAX_PLATFORMS` when set, else
    whether a CUDA plugin (jax-cuda12-plugin, jax-cuda13-plugin...) is installed."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return any(p.strip() in ("cuda", "gpu") for p in platforms.split(","))
    names = ((d.metadata.get("Name") or "").lower() for d in importlib.metadata.distributions())
    return any(_CUDA_PLUGIN.fullmatch(name) for name in names)


def apply_recommended_flags(environ: MutableMapping[str, str] = os.environ, gpu: bool | None = None) -> list[str]:
    """Add `RECOMMENDED_GPU_FLAGS` to `environ["XLA_FLAGS"]` when on a GPU; returns the flags added.

    Call before the first JAX computation. `gpu` None means `gpu_expected(environ)`.
    """
    if environ.get(DISABLE_ENV, "").strip().lower() in ("0", "false", "off", "no"):
        return []
    if not (gpu_expected(environ) if gpu is None else gpu):
        return []
    merged, added = merge_flags(environ.get("XLA_FLAGS", ""), RECOMMENDED_GPU_FLAGS)
    if added:
        environ["XLA_FLAGS"] = merged
    return added


__all__ = [
    "CANDIDATE_GPU_FLAGS", "DISABLE_ENV", "RECOMMENDED_GPU_FLAGS", "apply_recommended_flags", "flag_names",
    "gpu_expected", "merge_flags",
]
