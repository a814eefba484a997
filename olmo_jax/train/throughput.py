"""Throughput of a run: tokens/s over a window of steps, MFU against the device's dense bf16 peak, and the ETA
(docs/olmo_facts.md §9 for OLMo's SpeedMonitor, whose window and resets this follows)."""

from __future__ import annotations

import collections
import dataclasses
import time

import jax

# Dense bf16 peak FLOP/s per device by device kind (the 1,979 TFLOP/s H100 figure assumes sparsity).
PEAK_FLOPS = {"a100": 312e12, "h100": 989e12, "h200": 989e12, "h800": 989e12, "gh200": 989e12}

def peak_flops(device: jax.Device | None = None) -> float | None:
    """The assumed dense bf16 peak of one device, or None when unknown (e.g. CPUs)."""
    kind = (device or jax.devices()[0]).device_kind.lower()
    for name, flops in PEAK_FLOPS.items():
        if name in kind.replace(" ", "").replace("nvidia", ""):
            return flops
    return None


@dataclasses.dataclass
class SpeedMonitor:
    """Tokens/s over the last `window` steps, MFU and ETA. Call `reset` after compilation, evals and checkpoints,
    whose time should not count as training time (as OLMo's SpeedMonitor does)."""

    tokens_per_step: int
    flops_per_token: float
    n_devices: int
    window: int = 20
    _times: collections.deque = dataclasses.field(default_factory=collections.deque)

    def __post_init__(self) -> None:
        self.peak = peak_flops()

    def reset(self) -> None:
        self._times.clear()

    def tick(self) -> None:
        """Mark the end of a step."""
        self._times.append(time.perf_counter())
        while len(self._times) > self.window + 1:
            self._times.popleft()

    def step_time(self) -> float | None:
        if len(self._times) < 2:
            return None
        return (self._times[-1] - self._times[0]) / (len(self._times) - 1)

    def metrics(self) -> dict[str, float]:
        seconds = self.step_time()
        if seconds is None:
            return {}
        tokens_per_second = self.tokens_per_step / seconds
        out = {"throughput/tokens_per_second": tokens_per_second, "throughput/step_time": seconds}
        if self.peak is not None:
            out["throughput/mfu"] = tokens_per_second * self.flops_per_token / (self.peak * self.n_devices)
        return out

    def mfu_note(self) -> str:
        if self.peak is None:
            return f"MFU n/a (no known peak for {jax.devices()[0].device_kind})"
        return f"MFU vs {self.peak / 1e12:.0f} TFLOP/s × {self.n_devices}"
