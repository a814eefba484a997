"""The training run: assembled from small factories, then driven by a loop of hooks.

`build_run(config)` assembles a `Run` from factories that each build one part and can be called alone:
`make_data` (token files and the batch of each step), `make_step` (the jitted step, the one tools/benchmark.py
times), `make_evaluators` and `make_checkpointer`. `train(config)` takes the initial state (its own newest checkpoint
that verifies, `load_path` or a fresh init: olmo_jax/train/resume.py), then `run_loop` dispatches steps and calls the
hooks (olmo_jax/train/hooks.py) that log, checkpoint, evaluate and stop. The command line around it is
`python -m olmo_jax.train` (olmo_jax/train/__main__.py).

Nothing is written to the save folder before the run knows it can proceed: the folder's writability, the parts,
the initial state and the step range are checked first (a stop request in that time ends the run with nothing
written); then the checkpointer opens, the config is recorded and the loop starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from olmo_jax.config import TrainConfig
from olmo_jax.data.ledger import LedgerWriter
from olmo_jax.data.order import Batches, BatchSplit, write_global_indices
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.data.tokenizer import Tokenizer
from olmo_jax.errors import ConfigError, DataError, TrainingError
from olmo_jax.eval.evaluators import Evaluators
from olmo_jax.parallel.distributed import PeerWatch
from olmo_jax.parallel.mesh import make_mesh, to_host
from olmo_jax.train.checkpoint import Checkpointer, package_versions
from olmo_jax.train.hooks import (
    Evaluate,
    Hook,
    LogMetrics,
    RecordLedger,
    SaveCheckpoint,
    StepEnd,
    StopOnRequest,
    WatchSaves,
    WriteDataOrder,
    hooks_of,
    host_sync,
)
from olmo_jax.train.metrics import MetricsWriter
from olmo_jax.train.optim import OPT_STATE_LAYOUT, lr_schedule, make_optimizer
from olmo_jax.train.resume import StateSource, data_fingerprint, initial_state, optimizer_settings
from olmo_jax.train.signals import StopRequest
from olmo_jax.train.step import JittedStep, SpikeGuard, TrainState, jit_train_step
from olmo_jax.train.throughput import SpeedMonitor


def make_data(config: TrainConfig, split: BatchSplit) -> Batches:
    """The token files (probed: sizes, remote servers) and the batch of every step, this process's share."""
    files = TokenFiles(config.data.paths, config.data.memmap_dtype, config.model.max_sequence_length,
                       remote=config.data.remote_options())
    return Batches(files, config.data_seed, split.global_batch, split.grad_accum, dp_world_size=split.dp_size,
                   process_index=jax.process_index(), process_count=jax.process_count(),
                   vocab_size=config.model.vocab_size)


def make_step(config: TrainConfig, mesh: Mesh) -> JittedStep:
    """The run's train step, bound to its model, run options, optimizer and loss settings and jitted for `mesh`
    (the trainer and tools/benchmark.py both build it here)."""
    optimizer = make_optimizer(config.optimizer, config.scheduler, config.max_duration, config.max_grad_norm)
    g = config.loss_spike_guard
    guard = SpikeGuard(g.window, g.sigma, g.max_skips) if g.enabled else None
    return jit_train_step(config.model, config.run, optimizer, config.loss_chunk_size, config.softmax_auxiliary_loss,
                          mesh, guard, per_token=config.loss_normalization == "tokens")


def make_evaluators(config: TrainConfig) -> Evaluators | None:
    """The in-loop evaluators with their data read and tokenized now, so a missing set fails at the start rather
    than at the first evaluation hours later."""
    if not config.evaluators:
        return None
    m = config.model
    tokenizer = None
    if any(e.type == "downstream" for e in config.evaluators):
        tokenizer = Tokenizer.load(config.tokenizer, m.eos_token_id, m.pad_token_id)
    evaluators = Evaluators(config.evaluators, m, tokenizer, config.device_eval_batch_size,
                            config.data.memmap_dtype, config.run)
    evaluators.prepare()
    return evaluators


def make_checkpointer(config: TrainConfig) -> Checkpointer:
    """The run's checkpoint writer (it creates the folder and removes a killed predecessor's unfinished saves)."""
    return Checkpointer(Path(config.save_folder) / "checkpoints", config.save_num_checkpoints_to_keep)


def own_checkpoints(config: TrainConfig) -> Checkpointer | None:
    """A read-only view of the run's existing checkpoints, or None where there are none: for deciding where to
    start before anything is written."""
    directory = Path(config.save_folder) / "checkpoints"
    return Checkpointer(directory, read_only=True) if directory.is_dir() else None


def check_writable(folder: str | Path) -> None:
    """A ConfigError now, naming the folder, if the run could not write its save folder (read-only, not a folder,
    no permission); probes with a temporary file that is removed at once."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"save_folder={folder}: {existing} is a file, not a folder; choose another save_folder.")
    for target in (existing, folder / "checkpoints"):
        if not target.is_dir():
            continue
        try:
            fd, probe = tempfile.mkstemp(dir=target, prefix=".olmo_jax-write-check-")
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            raise ConfigError(f"save_folder={folder} cannot be written ({e.strerror or e}: {target}); the run keeps "
                              "its checkpoints and metrics there. Choose a folder you can write "
                              "(--config.save_folder=...).") from e


@dataclasses.dataclass
class Run:
    """The parts of one training run, built by `build_run`."""

    config: TrainConfig
    mesh: Mesh
    split: BatchSplit
    batches: Batches
    step: JittedStep
    evaluators: Evaluators | None
    checkpointer: Checkpointer | None = None  # opened by train() once the run knows it can proceed

    @property
    def files(self) -> TokenFiles:
        return self.batches.files

    @property
    def run_dir(self) -> Path:
        return Path(self.config.save_folder)

    @property
    def tokens_per_step(self) -> int:
        return self.split.global_batch * self.config.model.max_sequence_length

    @property
    def fingerprint(self) -> dict[str, Any]:
        return data_fingerprint(self.files, self.config.data_seed, self.split.global_batch)

    @property
    def schedule(self) -> optax.Schedule:
        """The optimizer's LR schedule, for converting checkpoints of the earlier optimizer-state layout."""
        c = self.config
        return lr_schedule(c.scheduler, c.optimizer.learning_rate, c.max_duration)

    def state_source(self) -> StateSource:
        c = self.config
        return StateSource(c.model, self.fingerprint, optimizer_settings(c.to_dict()), c.load_path,
                           c.reset_optimizer_state, c.allow_resume_mismatch, c.allow_optimizer_change, c.model.init_fn,
                           c.seed, self.batches.batches_per_epoch)

    @property
    def data_order_file(self) -> Path:
        """OLMo's `train_data/global_indices.npy` (its IterableDataset's work_dir is `<save_folder>/train_data`)."""
        return self.run_dir / "train_data" / "global_indices.npy"

    def write_data_order(self, epoch: int) -> None:
        write_global_indices(self.data_order_file, self.batches.epoch_order(epoch))

    def save(self, state: TrainState, step: int) -> None:
        meta = {
            "step": step,
            "model": self.config.model,
            "run": self.config.run,  # how this run ran, for information: never restored
            "config": self.config.to_dict(),
            "data_fingerprint": self.fingerprint,
            "tokens_seen": step * self.tokens_per_step,
            "opt_state_layout": OPT_STATE_LAYOUT,
            "loss_spike_guard": {k: v.tolist() for k, v in to_host(state.guard._asdict()).items()},
            "versions": package_versions(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.checkpointer.save(step, state.params, meta, state.opt_state)

    def last_good(self) -> str:
        self.checkpointer.wait()
        step = self.checkpointer.latest_step()
        if step is None:
            return "there is no checkpoint yet"
        return f"the last good checkpoint is step {step} in {self.checkpointer.directory}; rerun the command to resume"

    def summary(self, start_step: int, how: str) -> str:
        c, m, split = self.config, self.config.model, self.split
        run = c.run
        rows = [
            ("run", f"{c.run_name} → {self.run_dir.absolute()}"),
            ("model", f"{m.num_params():,} parameters: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, "
                      f"context {m.max_sequence_length}, vocab {m.padded_vocab}"),
            ("compute", f"{run.dtype}, attention {run.attention_impl}, remat {run.remat}"),
            ("batch", f"{split.global_batch} × {m.max_sequence_length} = {self.tokens_per_step:,} tokens/step "
                      f"(microbatch {split.microbatch} × accumulation {split.grad_accum} × {split.dp_size} devices)"),
            ("steps", f"{start_step} → {c.last_step} of {c.max_duration} (LR schedule length), "
                      f"{(c.last_step - start_step) * self.tokens_per_step:,} tokens to go"),
            ("devices", f"{jax.device_count()} × {jax.devices()[0].device_kind} in {jax.process_count()} process(es), "
                        f"mesh data={self.mesh.shape['data']} fsdp={self.mesh.shape['fsdp']}"),
            ("data", f"{len(self.files.paths)} file(s), {self.files.num_instances:,} instances, "
                     f"{self.batches.batches_per_epoch:,} steps per epoch, seed {c.data_seed}"),
            ("state", how),
        ]
        return "\n".join(f"{k:>8}: {v}" for k, v in rows)


def build_run(config: TrainConfig) -> Run:
    """Every part of a run but its checkpoint writer, in the order that fails fastest: mesh, batch split, data, step,
    evaluators. Nothing here writes."""
    if config.wandb.enabled and importlib.util.find_spec("wandb") is None:
        raise ConfigError("wandb.enabled is set but wandb is not installed: pip install 'olmo_jax[wandb]' or set "
                          "--config.wandb.enabled=False.")
    mesh = make_mesh(config.mesh)
    split = BatchSplit.of(config.global_train_batch_size, config.device_train_microbatch_size, mesh.size)
    batches = make_data(config, split)
    step = make_step(config, mesh)
    evaluators = make_evaluators(config)
    return Run(config, mesh, split, batches, step, evaluators)


def train(config: TrainConfig) -> int:
    """Run training to `stop_at` or `max_duration`; returns the last completed step."""
    is_main = jax.process_index() == 0
    with StopRequest() as stop:  # from the start: a stop during start-up or compilation ends the run cleanly
        check_writable(config.save_folder)
        run = build_run(config)
        reader = own_checkpoints(config)
        try:
            start_from = initial_state(run.state_source(), run.step, reader, run.schedule)
        finally:
            if reader is not None:
                reader.close()
        state = start_from.state
        start = int(state.step)
        if start > config.last_step:
            raise TrainingError(
                f"The checkpoint in {Path(config.save_folder) / 'checkpoints'} is at step {start}, past this run's "
                f"last step {config.last_step} (max_duration={config.max_duration}, stop_at={config.stop_at}). Raise "
                "max_duration (or stop_at) to go on, or use a new save_folder. Nothing was written.")
        if start == config.last_step:
            if is_main:
                print(f"Nothing to do: the run is already at its last step {start}.")
            return start
        if stop.requested:
            if is_main:
                print(f"Stopped by {stop.requested} before the first step; nothing was written.")
            return start
        run.checkpointer = make_checkpointer(config)  # the run's first write
        try:
            return _train(run, state, start, start_from.how, start_from.damaged, stop)
        except OSError as e:  # the run's own files (train_config.json, metrics.jsonl, TensorBoard): a full disk
            raise TrainingError(f"Cannot write {e.filename or run.run_dir}: {e.strerror or e}. The run stopped; "
                                f"{run.last_good()}.") from e
        finally:
            run.checkpointer.close()


def _train(run: Run, state: TrainState, start: int, how: str, damaged: tuple[tuple[int, str], ...],
           stop: StopRequest) -> int:
    config, is_main = run.config, jax.process_index() == 0
    for step, why in damaged:
        where = run.checkpointer.set_aside(step)
        if is_main:
            print(f"warning: {why}\n  It is kept as {where}; resuming from the newest step that verifies.",
                  file=sys.stderr, flush=True)
    if is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        run.write_data_order(run.batches.epoch_of(start))
        print(run.summary(start, how), flush=True)
    writer = MetricsWriter(run.run_dir, start, enabled=is_main, tensorboard=config.tensorboard,
                           wandb=_wandb_kwargs(config) if config.wandb.enabled else None)
    bar = tqdm(total=config.last_step, initial=start, unit="step", dynamic_ncols=True,
               disable=None if is_main else True)
    console = bar.write if is_main else _silent
    speed = SpeedMonitor(run.tokens_per_step, config.model.flops_per_token(), jax.device_count())
    log = LogMetrics(config.console_log_interval, writer, speed, run.tokens_per_step, console)
    ledger = LedgerWriter(run.run_dir, run.batches, start) if is_main and config.data.ledger else None
    try:
        hooks = make_hooks(run, stop, writer, log, console, ledger)
        with PeerWatch(run.checkpointer.directory, settle_s=config.distributed.heartbeat_timeout_seconds + 10):
            step, _ = run_loop(run, state, start, hooks, speed, bar.update, console,
                               ledger.observe if ledger is not None else None)
    except DataError as e:  # e.g. a remote file failing for good mid-run, raised from the prefetch thread
        raise DataError(f"{e}\nThe run stopped; {run.last_good()}.") from e
    finally:
        bar.close()
        writer.close()
        if ledger is not None:
            ledger.close()
    if is_main and "train/loss" in log.last_logged:
        ended = "Finished" if step == config.last_step else "Stopped"
        print(f"{ended} at step {step}: loss {log.last_logged['train/loss']:.4f}; checkpoints in "
              f"{run.checkpointer.directory}")
    return step


def make_hooks(run: Run, stop: StopRequest, writer: MetricsWriter, log: LogMetrics, console: Any,
               ledger: LedgerWriter | None = None) -> list[Hook]:
    """The loop's hooks, in the order they run after a step: stop requests, logging, checkpointing, evaluation."""
    c = run.config
    evaluate = Evaluate(c.eval_interval, run.evaluators, writer, console) if run.evaluators is not None else None
    save = SaveCheckpoint(c.save_interval, run.save, run.checkpointer, console)
    order = WriteDataOrder(run.batches.batches_per_epoch, run.write_data_order) if jax.process_index() == 0 else None
    record = RecordLedger(1, ledger.write) if ledger is not None else None
    return hooks_of(StopOnRequest(1, stop), log, record, save, WatchSaves(1, run.checkpointer), order, evaluate)


class HealthCheck:
    """Whether the newest step kept the loss and gradient norm finite and, with the spike guard, whether its loss
    spiked (the step leaves the state unchanged when not healthy, and applies no update at a spike,
    olmo_jax/train/step.py). The loop verifies each step once the next one is queued, so the device never waits for
    the host, and before any hook reads or saves the state: one transfer of four scalars per step."""

    def __init__(self, run: Run, console: Any = None) -> None:
        self._run = run
        self._console = console or _silent
        self._pending: tuple[int, dict[str, jax.Array]] | None = None
        self.spiking = False  # the last verified step was a spike
        self._streak_start: int | None = None

    def push(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.verify()
        self._pending = (step, metrics)

    def verify(self) -> None:
        if self._pending is None:
            return
        step, metrics = self._pending
        self._pending = None
        with host_sync("health: the loop's one transfer per step"):
            ok, skipped, loss, limit = jax.device_get(
                (metrics["healthy"], metrics["train/skipped"], metrics["train/loss"], metrics["spike_limit"]))
        self.spiking = bool(skipped)
        if self.spiking and self._streak_start is None:
            self._streak_start = step
        elif not self.spiking:
            self._streak_start = None
        if bool(ok):
            if self.spiking:
                self._console(f"warning: step {step}: loss {float(loss):.4f} is above the spike limit "
                              f"{float(limit):.4f} (or the gradient norm is 0); its update was skipped "
                              f"(loss_spike_guard).")
            return
        if self.spiking:
            raise TrainingError(self._spikes(step, float(loss), float(limit)))
        with host_sync("the failure's numbers"):
            grad_norm = float(metrics["train/grad_norm"])
        raise TrainingError(
            f"Non-finite training signal at step {step}: loss={float(loss)}, grad_norm={grad_norm}. The run stopped "
            f"before applying that update; {self._run.last_good()}. Lower optimizer.learning_rate, check the data at "
            "this step (tools/inspect_data.py), or enable softmax_auxiliary_loss (z-loss)."
        )

    def _spikes(self, step: int, loss: float, limit: float) -> str:
        """The message of a run stopped by the spike guard; the checkpoint of the step before the spikes began holds
        the state that spiked, so it is set aside as `<step>.suspect`."""
        checkpointer, first = self._run.checkpointer, self._streak_start or step
        checkpointer.wait()
        suspect = ""
        if checkpointer.latest_step() == first - 1:
            where = checkpointer.set_aside(first - 1, "suspect")
            suspect = f" The checkpoint of step {first - 1}, whose state spiked, is kept aside as {where}."
        g = self._run.config.loss_spike_guard
        return (f"Loss spikes at steps {first}-{step}: more than loss_spike_guard.max_skips={g.max_skips} in a row "
                f"(the last: loss {loss:.4f} above the limit {limit:.4f}, mean + {g.sigma} std of the last "
                f"{g.window} steps' losses, or a gradient norm of 0). The run stopped before checkpointing that "
                f"state; {self._run.last_good()}.{suspect} Lower optimizer.learning_rate, check the data of these "
                "steps (tools/inspect_data.py), or raise loss_spike_guard.sigma.")


def run_loop(run: Run, state: TrainState, start: int, hooks: list[Hook], speed: SpeedMonitor,
             progress: Any = None, console: Any = None,
             observe: Callable[[int, np.ndarray], None] | None = None) -> tuple[int, TrainState]:
    """Dispatch steps from `start` to the run's last step (or a stop), calling the hooks that are due after each;
    returns the last completed step and the state. `observe` sees each batch in the prefetch thread (the ledger)."""
    last = run.config.last_step
    step = start
    health = HealthCheck(run, console)
    with run.batches.prefetch(start, last, run.config.data.prefetch_depth, observe=observe) as batches:
        for batch_step, local_batch in batches:
            batch = jax.make_array_from_process_local_data(run.step.batch_sharding, local_batch)
            state, metrics = run.step.train_step(state, batch)
            step = batch_step + 1
            health.push(step, metrics)  # verifies the step before, now that this one is queued
            speed.tick()
            if step == start + 1:
                speed.reset()  # the first step includes compilation
                speed.tick()
            if progress is not None:
                progress(1)
            event = StepEnd(step, last, state, metrics)
            paused = False
            for hook in hooks:
                if hook.due(event):
                    if hook.needs_healthy:
                        health.verify()
                        event.spiking = health.spiking
                    if event.spiking and not hook.while_spiking:
                        continue
                    hook(event)
                    paused |= hook.pauses
            if paused:
                speed.reset()  # checkpointing and evaluation time is not training time
            if event.stopping:
                break
    health.verify()
    return step, state


def _silent(_: str) -> None:
    pass


def _wandb_kwargs(config: TrainConfig) -> dict[str, Any]:
    w = config.wandb
    return {"project": w.project, "entity": w.entity, "group": w.group, "name": w.name or config.run_name,
            "config": config.to_dict()}


__all__ = ["Run", "build_run", "make_checkpointer", "make_data", "make_evaluators", "make_hooks", "make_step",
           "run_loop", "train"]
