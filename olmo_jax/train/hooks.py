"""What the training loop does besides stepping, as small hooks: stop requests, logging, checkpointing (and
watching the save in flight), OLMo's data-order file at epoch boundaries, and evaluation, each with its own
interval.

After each step the loop calls every hook that is due: every `interval` steps, and at the last step of the run (the
forced final pass). A run stopped early by a signal or a preemption notice makes a final pass of the hooks marked
`at_stop` (logging and the checkpoint; not a long evaluation). A hook that reads or persists the state
(`needs_healthy`) runs only after the loop has checked that the step just taken was finite. Hooks whose time is not
training time (`pauses`) restart the throughput window.

Device values reach the host only through `host_sync` (olmo_jax/train/trainer.py): the loop's one transfer per step
is the health flag of the step before; log steps add the metrics, checkpoints and evaluations their own transfers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator

import jax

from olmo_jax.eval.evaluators import Evaluators
from olmo_jax.train.checkpoint import Checkpointer
from olmo_jax.train.metrics import MetricsWriter, console_line
from olmo_jax.train.signals import StopRequest
from olmo_jax.train.step import TrainState
from olmo_jax.train.throughput import SpeedMonitor

Console = Callable[[str], None]
INTERNAL_METRICS = ("healthy", "spike_limit")  # for the loop's checks, not logged


@contextlib.contextmanager
def host_sync(why: str) -> Iterator[None]:
    """Where the loop moves device values to the host, named by `why`; everywhere else device-to-host transfers
    are disallowed by the tests (jax.transfer_guard_device_to_host)."""
    del why  # documentation at the call site
    with jax.transfer_guard_device_to_host("allow"):
        yield


@dataclasses.dataclass
class StepEnd:
    """What a hook sees after a step: its number (the updates applied so far), the run's last step, the state and
    the step's metrics (device arrays), and, once a hook has asked to stop, why."""

    step: int
    last_step: int
    state: TrainState
    metrics: dict[str, jax.Array]
    stopping: str | None = None
    spiking: bool = False  # the spike guard skipped this step's update (known once the step is verified)

    @property
    def is_last(self) -> bool:
        return self.step == self.last_step


@dataclasses.dataclass
class Hook:
    """Base: due every `interval` steps and at the run's last step."""

    interval: int
    at_stop = False  # runs in the final pass of a run stopped early
    needs_healthy = False  # runs only once the step is known to be finite
    while_spiking = True  # runs also at a step whose update the spike guard skipped
    pauses = False  # its time is not training time

    def due(self, event: StepEnd) -> bool:
        if event.stopping is not None:
            return self.at_stop
        return event.step % self.interval == 0 or event.is_last

    def __call__(self, event: StepEnd) -> None:
        raise NotImplementedError


@dataclasses.dataclass
class StopOnRequest(Hook):
    """Every step: has SIGTERM, Ctrl-C or a preemption notice asked the run to stop? (Every process must ask at
    every step, JAX's preemption protocol.)"""

    stop: StopRequest = dataclasses.field(default_factory=StopRequest)

    def __call__(self, event: StepEnd) -> None:
        event.stopping = self.stop.check(event.step)


@dataclasses.dataclass
class LogMetrics(Hook):
    """Every `console_log_interval` steps: fetch the step's metrics, add throughput, write them everywhere and print
    the console line."""

    writer: MetricsWriter
    speed: SpeedMonitor
    tokens_per_step: int
    console: Console
    last_logged: dict[str, float] = dataclasses.field(default_factory=dict)
    at_stop = True
    needs_healthy = True

    def __call__(self, event: StepEnd) -> None:
        with host_sync("log step: the step's metrics"):
            host = {k: float(v) for k, v in jax.device_get(event.metrics).items() if k not in INTERNAL_METRICS}
        host |= self.speed.metrics() | {"throughput/total_tokens": event.step * self.tokens_per_step}
        host["train/perplexity"] = math.exp(min(host["train/loss"], 700.0))
        seconds = self.speed.step_time()
        eta = seconds * (event.last_step - event.step) if seconds else None
        self.writer.write(event.step, host)
        note = "" if "throughput/mfu" in host or event.is_last else f" | {self.speed.mfu_note()}"
        self.console(console_line(event.step, event.last_step, host, eta) + note)
        self.last_logged = host


@dataclasses.dataclass
class SaveCheckpoint(Hook):
    """Every `save_interval` steps, at the end, and when stopped early: save the state (asynchronously); not at a step
    whose loss spiked (the state may be the one that made it spike)."""

    save: Callable[[TrainState, int], None]
    checkpointer: Checkpointer
    console: Console
    at_stop = True
    needs_healthy = True
    while_spiking = False
    pauses = True

    def __call__(self, event: StepEnd) -> None:
        with host_sync("checkpoint: checksums of the state, and Orbax copies it to the host"):
            self.save(event.state, event.step)
        if event.stopping:
            self.checkpointer.wait()  # say "saved" only once it is
            self.console(f"Stopped by {event.stopping} after step {event.step}; checkpoint saved in "
                         f"{self.checkpointer.directory / str(event.step)}. Rerun the same command to resume.")


@dataclasses.dataclass
class WatchSaves(Hook):
    """Every step: has the save in flight failed in the background (a full disk)? Then the run ends now, naming
    the step and the last complete checkpoint, instead of at the next save (a non-blocking check)."""

    checkpointer: Checkpointer
    at_stop = True

    def __call__(self, event: StepEnd) -> None:
        self.checkpointer.check()


@dataclasses.dataclass
class WriteDataOrder(Hook):
    """At each epoch boundary (interval: steps per epoch), OLMo's `train_data/global_indices.npy` for the epoch the
    next batch starts, as OLMo's IterableDataset rewrites it when it reshuffles (the trainer writes the first)."""

    write: Callable[[int], None]  # epoch → writes that epoch's order

    def due(self, event: StepEnd) -> bool:
        return event.stopping is None and event.step % self.interval == 0 and not event.is_last

    def __call__(self, event: StepEnd) -> None:
        self.write(event.step // self.interval)


@dataclasses.dataclass
class RecordLedger(Hook):
    """Every step, once it is known to be finite (also a step whose update the spike guard skipped: its batch was
    consumed): the batch ledger's record (olmo_jax/data/ledger.py), also in a stopped run's final pass."""

    write: Callable[[int], None]  # step → appends its record
    at_stop = True
    needs_healthy = True

    def __call__(self, event: StepEnd) -> None:
        self.write(event.step)


@dataclasses.dataclass
class Evaluate(Hook):
    """Every `eval_interval` steps and at the end: run the evaluators on the current parameters."""

    evaluators: Evaluators
    writer: MetricsWriter
    console: Console
    needs_healthy = True
    pauses = True

    def __call__(self, event: StepEnd) -> None:
        with host_sync("evaluation: scores"):
            results = self.evaluators(event.state.params)
        self.writer.write(event.step, results)
        self.console(f"eval at step {event.step} | " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()))


def hooks_of(*hooks: Hook | None) -> list[Hook]:
    """The hooks that exist, in the order given (the stop check first, so a stop's final pass is the same step)."""
    return [h for h in hooks if h is not None]


__all__ = ["Evaluate", "Hook", "LogMetrics", "RecordLedger", "SaveCheckpoint", "StepEnd", "StopOnRequest",
           "WriteDataOrder", "hooks_of", "host_sync"]
