"""Measuring the train step: compile time, step time, tokens/s, MFU and memory (tools/benchmark.py, gpu_sweep.py).

The step measured is the trainer's own (`olmo_jax.train.trainer.make_step`): the same shardings, donation, gradient
accumulation and chunked loss. How it is timed: compiled ahead of time (`lower`, then `compile`, each timed apart
and never inside a step time); a few warm-up steps; then each timed step alone, from dispatch until
`block_until_ready` on everything the step returns (JAX dispatch is asynchronous); the median of those.

MFU = tokens/s × (6N + 12·L·d·s) / (peak × devices), the peak being the device kind's dense bf16 figure
(`olmo_jax.train.throughput.PEAK_FLOPS`: A100 312, H100/H200 989 TFLOP/s); None where no peak is known (CPUs).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from olmo_jax.config import TrainConfig
from olmo_jax.data.order import BatchSplit
from olmo_jax.model.attention import attention_impl
from olmo_jax.parallel.mesh import make_mesh
from olmo_jax.train.step import JittedStep, TrainState
from olmo_jax.train.throughput import peak_flops
from olmo_jax.train.trainer import make_data, make_step


@dataclasses.dataclass(frozen=True)
class CompiledStep:
    """The trainer's step compiled ahead of time for the config's batch shape."""

    config: TrainConfig
    jitted: JittedStep
    split: BatchSplit
    executable: jax.stages.Compiled
    lower_seconds: float
    compile_seconds: float

    @property
    def batch_shape(self) -> tuple[int, int, int]:
        """The global batch: int32 [A, M·devices, T]."""
        return (*self.split.batch_shape, self.config.model.max_sequence_length)

    @property
    def tokens_per_step(self) -> int:
        return self.split.global_batch * self.config.model.max_sequence_length


def compile_step(config: TrainConfig, mesh: jax.sharding.Mesh | None = None) -> CompiledStep:
    """Lower and compile the train step on abstract shapes (nothing is allocated), timing each phase."""
    mesh = mesh if mesh is not None else make_mesh(config.mesh)
    split = BatchSplit.of(config.global_train_batch_size, config.device_train_microbatch_size, mesh.size)
    jitted = make_step(config, mesh)
    batch = jax.ShapeDtypeStruct((*split.batch_shape, config.model.max_sequence_length), jnp.int32,
                                 sharding=jitted.batch_sharding)
    start = time.perf_counter()
    lowered = jitted.train_step.lower(jitted.abstract_state, batch)
    lowered_at = time.perf_counter()
    executable = lowered.compile()
    return CompiledStep(config, jitted, split, executable, lowered_at - start, time.perf_counter() - lowered_at)


def compiled_memory(executable: jax.stages.Compiled) -> dict[str, int]:
    """XLA's buffer assignment for one device: arguments, outputs, outputs aliasing (donated) arguments, temporaries,
    and `total` = arguments + outputs − aliased + temporaries, the program's peak as compiled. Empty where the
    backend gives no analysis."""
    stats = executable.memory_analysis()
    if stats is None:
        return {}
    out = {
        "argument_bytes": int(stats.argument_size_in_bytes), "output_bytes": int(stats.output_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes), "temp_bytes": int(stats.temp_size_in_bytes),
    }
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    return out


def peak_device_memory() -> int | None:
    """The allocator's peak bytes in use on this process's devices (the largest), or None where not reported (CPU).
    A process-lifetime peak: it covers everything the process ran so far."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


def synthetic_batches(step: CompiledStep, count: int, seed: int = 0) -> list[jax.Array]:
    """`count` global batches of uniform random token ids below vocab_size, already on the devices."""
    rng = np.random.default_rng(seed)
    a, rows, t = step.batch_shape
    local_rows = rows // jax.process_count()
    vocab = step.config.model.vocab_size
    return [jax.make_array_from_process_local_data(
        step.jitted.batch_sharding, rng.integers(0, vocab, (a, local_rows, t), dtype=np.int32)) for _ in range(count)]


def real_batches(step: CompiledStep, count: int) -> list[jax.Array]:
    """The first `count` global batches of the config's token files, in OLMo's order, as the trainer reads them."""
    batches = make_data(step.config, step.split)
    return [jax.make_array_from_process_local_data(step.jitted.batch_sharding, batches.batch_at(i))
            for i in range(count)]


def median_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall time of `repeats` calls of fn() after one untimed call (compilation, allocator, caches). fn must
    wait for its own results (`jax.block_until_ready`)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_steps(
    step: CompiledStep, state: TrainState, batches: Sequence[jax.Array], warmup: int, steps: int
) -> tuple[TrainState, list[float], dict[str, float]]:
    """Run `warmup` untimed steps, then `steps` timed ones (cycling through `batches`); returns the state, each timed
    step's seconds and the last step's metrics. Each step is waited for before the next is dispatched."""
    metrics: dict[str, jax.Array] = {}
    times = []
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        state, metrics = step.executable(state, batch)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return state, times, {k: float(v) for k, v in jax.device_get(metrics).items()}


def describe(step: CompiledStep) -> dict[str, Any]:
    """What was compiled: model size, precision, attention, remat, batch layout, devices, compile times, memory."""
    c, m, split = step.config, step.config.model, step.split
    device = jax.devices()[0]
    return {
        "params": m.num_params(), "n_layers": m.n_layers, "d_model": m.d_model, "seq_len": m.max_sequence_length,
        "vocab": m.padded_vocab, "compute_dtype": c.run.dtype, "attention_impl": attention_impl(c.run),
        "remat": c.run.remat, "loss_chunk_size": c.loss_chunk_size, "global_batch": split.global_batch,
        "microbatch": split.microbatch, "grad_accum": split.grad_accum, "tokens_per_step": step.tokens_per_step,
        "devices": jax.device_count(), "device_kind": device.device_kind, "backend": jax.default_backend(),
        "jax_version": jax.__version__, "lower_seconds": step.lower_seconds, "compile_seconds": step.compile_seconds,
        "compiled_memory": compiled_memory(step.executable),
    }


def throughput(step: CompiledStep, times: Sequence[float]) -> dict[str, Any]:
    """Median step time, tokens/s and MFU (None without a known peak) of timed steps."""
    median = statistics.median(times)
    tokens_per_second = step.tokens_per_step / median
    flops = step.config.model.flops_per_token()
    peak = peak_flops()
    return {
        "timed_steps": len(times), "step_times": list(times), "step_time_median": median,
        "step_time_min": min(times), "step_time_max": max(times), "tokens_per_second": tokens_per_second,
        "flops_per_token": flops, "peak_flops_per_device": peak,
        "mfu": tokens_per_second * flops / (peak * jax.device_count()) if peak else None,
    }


def benchmark(config: TrainConfig, steps: int = 10, warmup: int = 3, real: bool = False,
              aot_only: bool = False) -> dict[str, Any]:
    """Compile the trainer's step for `config` and, unless `aot_only`, time it on synthetic (or real) batches.

    Returns one JSON-ready dict: `describe()` fields, then `throughput()` fields, `peak_bytes_in_use`, the last
    step's loss and where the data came from.
    """
    step = compile_step(config)
    result = describe(step)
    if aot_only:
        return result
    count = min(warmup + steps, 4)  # a few distinct batches, cycled: data loading is not what is measured here
    batches = real_batches(step, count) if real else synthetic_batches(step, count)
    state = step.jitted.init(jax.random.key(config.seed))
    _, times, metrics = time_steps(step, state, batches, warmup, steps)
    return result | throughput(step, times) | {
        "warmup_steps": warmup, "peak_bytes_in_use": peak_device_memory(), "loss": metrics["train/loss"],
        "data": "real" if real else "synthetic",
    }


def memory_table(config: TrainConfig, microbatches: Sequence[int], remats: Sequence[str]) -> list[dict[str, Any]]:
    """Compiled memory of the step for each microbatch × remat policy, with two micro-steps of accumulation each
    (AOT on abstract shapes: works for any model size on any machine; nothing is allocated)."""
    rows = []
    dp = make_mesh(config.mesh).size
    for remat in remats:
        for m in microbatches:
            c = dataclasses.replace(config, device_train_microbatch_size=m, global_train_batch_size=2 * m * dp,
                                    run=dataclasses.replace(config.run, remat=remat))
            step = compile_step(c)
            rows.append({"remat": remat, "microbatch": m, "attention_impl": attention_impl(c.run),
                         "compile_seconds": step.lower_seconds + step.compile_seconds,
                         **compiled_memory(step.executable)})
    return rows


__all__ = [
    "CompiledStep", "benchmark", "compile_step", "compiled_memory", "describe", "memory_table", "peak_device_memory",
    "real_batches", "synthetic_batches", "throughput", "time_steps",
]
