"""The training run: state (fresh, resumed or loaded), data, the jitted step, checkpoints, logging, evaluation and
clean stopping. `olmo_jax/train.py` is only the command line around `train(config)`."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from tqdm import tqdm

from olmo_jax import hf
from olmo_jax.checkpoint import Checkpointer, model_config_from_meta, open_step, package_versions
from olmo_jax.config import TrainConfig
from olmo_jax.data import Batches, DataError, TokenFiles
from olmo_jax.evaluate import Evaluators
from olmo_jax.model import ModelConfig, param_shapes
from olmo_jax.monitor import MetricsWriter, SpeedMonitor, console_line
from olmo_jax.quickstart import ensure_stdlib_corpus, unigram_entropy
from olmo_jax.sharding import make_mesh
from olmo_jax.tokenizer import Tokenizer
from olmo_jax.train_step import Layout, TrainState, jit_train_step, new_state

# Model fields that change what the model computes without changing parameter shapes.
BEHAVIOUR_FIELDS = ("clip_qkv", "rope_theta", "layer_norm_eps")
SHAPE_FIELDS = ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_ratio", "mlp_hidden_size", "embedding_size",
                "weight_tying")


class TrainingError(RuntimeError):
    """The run cannot go on (non-finite loss, incompatible checkpoint...); the message says why and what to do."""


class StopRequest:
    """SIGTERM or Ctrl-C asks the loop to finish the current step, checkpoint and exit 0. A second Ctrl-C aborts.

    With several processes, SIGTERM (a scheduler's preemption notice) is caught by JAX's preemption service
    instead: it tells every process, and all of them stop and save at the same step. A Python SIGTERM handler
    would exclude that service, and a Ctrl-C seen by the processes at different steps would leave one saving while
    another waits in the next step's collectives; so there Ctrl-C keeps its default meaning: abort.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self.multiprocess = jax.process_count() > 1
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in () if self.multiprocess else (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        tqdm.write(f"{self.requested} received: finishing this step, then checkpointing and exiting "
                   "(Ctrl-C again to abort without a checkpoint)", file=sys.stderr)

    def check(self, step: int) -> str | None:
        """Why to stop after `step`, or None. Every process must call this at every step (JAX's protocol)."""
        if self.multiprocess and multihost_utils.reached_preemption_sync_point(step):
            self.requested = "SIGTERM (preemption notice)"
        return self.requested

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def data_fingerprint(files: TokenFiles, seed: int, global_batch_size: int) -> dict[str, Any]:
    """What decides which instances each step sees: the files, the seed and the global batch size."""
    return {**files.fingerprint(), "seed": seed, "global_train_batch_size": global_batch_size}


def model_differences(saved: ModelConfig, config: ModelConfig) -> tuple[list[str], bool]:
    """The fields of `saved` that differ from `config` and change the model, and whether its parameter shapes
    differ (then no restore is possible)."""
    shapes_differ = param_shapes(saved) != param_shapes(config)
    fields = (SHAPE_FIELDS if shapes_differ else ()) + BEHAVIOUR_FIELDS
    return [f"model.{k}: {getattr(saved, k)!r} vs {getattr(config, k)!r}" for k in fields
            if getattr(saved, k) != getattr(config, k)], shapes_differ


def _check_compatible(saved_model: ModelConfig, saved_data: dict[str, Any] | None, config: TrainConfig,
                      fingerprint: dict[str, Any], where: Path, fix: str) -> None:
    """Refuse to continue from a checkpoint made for another model or other data, unless allowed."""
    problems, shapes_differ = model_differences(saved_model, config.model)
    if saved_data is not None and saved_data != fingerprint:
        changed = sorted(k for k in fingerprint if saved_data.get(k) != fingerprint[k])
        problems.append(f"data ({', '.join(changed)}): {[saved_data.get(k) for k in changed]} vs "
                        f"{[fingerprint[k] for k in changed]}")
    if shapes_differ:
        listing = "\n  - ".join(problems)
        raise TrainingError(f"{where} does not fit config.model (checkpoint vs config):\n  - {listing}")
    if problems and not config.allow_resume_mismatch:
        raise TrainingError(
            f"{where} was made for another run (checkpoint vs config):\n  - " + "\n  - ".join(problems)
            + f"\n{fix}, or set --config.allow_resume_mismatch=True to continue anyway."
        )


class Run:
    """Everything one training run holds; `train()` drives it."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.run_dir = Path(config.save_folder)
        self.is_main = jax.process_index() == 0
        self.mesh = make_mesh(config.mesh)
        self.layout = Layout.of(config, self.mesh.size)
        model = config.model
        self.files = TokenFiles(config.data.paths, config.data.memmap_dtype, model.max_sequence_length,
                                remote=config.data.remote_options())
        self.seed = config.data.seed if config.data.seed is not None else config.seed
        self.batches = Batches(
            self.files, self.seed, self.layout.global_batch, self.layout.grad_accum, dp_world_size=self.mesh.size,
            process_index=jax.process_index(), process_count=jax.process_count(), vocab_size=model.vocab_size,
        )
        jitted = jit_train_step(config, self.mesh)  # the same step tools/benchmark.py measures
        self.optimizer, self.schedule, self.train_step = jitted.optimizer, jitted.schedule, jitted.train_step
        self.state_shardings, self.abstract_state = jitted.state_shardings, jitted.abstract_state
        self.batch_sharding, self._init = jitted.batch_sharding, jitted.init
        tokenizer = None
        if any(e.type == "downstream" for e in config.evaluators):
            tokenizer = Tokenizer.load(config.tokenizer, model.eos_token_id, model.pad_token_id)
        self.evaluators = None
        if config.evaluators:
            self.evaluators = Evaluators(config.evaluators, model, tokenizer, config.device_eval_batch_size,
                                         config.data.memmap_dtype)
            self.evaluators.prepare()  # a missing eval set fails now, not at the first evaluation hours later
        self.tokens_per_step = self.layout.global_batch * model.max_sequence_length
        self.fingerprint = data_fingerprint(self.files, self.seed, self.layout.global_batch)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", config.save_num_checkpoints_to_keep)

    def initial_state(self) -> tuple[TrainState, str]:
        """Resume from this run's newest complete checkpoint, else start from load_path, else initialise."""
        latest = self.checkpointer.latest_step()
        if latest is not None:
            return self._from_checkpoint(self.checkpointer, latest, resuming=True)
        if self.config.load_path:
            path = Path(self.config.load_path)
            if (path / "config.json").exists():  # a Hugging Face directory: weights only
                hf_config, params = hf.load_hf(path)
                _check_compatible(hf_config, None, self.config, self.fingerprint, path,
                                  "Use a config matching the HF model")
                return self._fresh_optimizer(params), f"loaded weights from HF directory {path}"
            source, step = open_step(path)
            try:
                return self._from_checkpoint(source, step, resuming=False)
            finally:
                source.close()
        return self._init(jax.random.key(self.config.seed)), f"initialised ({self.config.model.init_fn} init)"

    def _from_checkpoint(self, source: Checkpointer, step: int, resuming: bool) -> tuple[TrainState, str]:
        """The full state of `step` (resume, or load_path), or its weights alone with a new optimizer at step 0 (a
        weights-only checkpoint such as a converted HF model, or load_path with reset_optimizer_state)."""
        where = source.directory / str(step)
        meta = source.meta(step)
        saved_model = model_config_from_meta(meta)
        weights_only = not (where / "opt_state").exists() or (self.config.reset_optimizer_state and not resuming)
        fix = ("Use a new save_folder for a different run" if resuming else
               "Set --config.reset_optimizer_state=True to take only its weights")
        _check_compatible(saved_model, None if weights_only else meta.get("data_fingerprint"), self.config,
                          self.fingerprint, where, fix)
        if weights_only:
            params, _, _ = source.restore(step, self.abstract_state.params)
            return self._fresh_optimizer(params), f"loaded the weights of {where} (new optimizer state, step 0)"
        params, opt_state, _ = source.restore(step, self.abstract_state.params, self.abstract_state.opt_state)
        state = TrainState(jnp.asarray(step, jnp.int32), params, opt_state, jnp.asarray(True))
        return state, f"{'resumed from' if resuming else 'loaded the full state of'} {where}"

    def _fresh_optimizer(self, params: Any) -> TrainState:
        params = jax.device_put(params, self.state_shardings.params)
        make = jax.jit(lambda p: new_state(p, self.optimizer), out_shardings=self.state_shardings)
        return make(params)

    def save(self, state: TrainState, step: int) -> None:
        meta = {
            "step": step,
            "model": self.config.model,
            "config": self.config,
            "data_fingerprint": self.fingerprint,
            "tokens_seen": step * self.tokens_per_step,
            "versions": package_versions(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.checkpointer.save(step, state.params, meta, state.opt_state)

    def summary(self, start_step: int, how: str) -> str:
        c, m, lay = self.config, self.config.model, self.layout
        rows = [
            ("run", f"{c.run_name} → {self.run_dir.absolute()}"),
            ("model", f"{m.num_params():,} parameters: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, "
                      f"context {m.max_sequence_length}, vocab {m.padded_vocab}, {m.compute_dtype} compute"),
            ("batch", f"{lay.global_batch} × {m.max_sequence_length} = {self.tokens_per_step:,} tokens/step "
                      f"(microbatch {lay.microbatch} × accumulation {lay.grad_accum} × {lay.dp_size} devices)"),
            ("steps", f"{start_step} → {c.last_step} of {c.max_duration} (LR schedule length), "
                      f"{(c.last_step - start_step) * self.tokens_per_step:,} tokens to go"),
            ("devices", f"{jax.device_count()} × {jax.devices()[0].device_kind} in {jax.process_count()} process(es), "
                        f"mesh data={self.mesh.shape['data']} fsdp={self.mesh.shape['fsdp']}"),
            ("data", f"{len(self.files.paths)} file(s), {self.files.num_instances:,} instances, "
                     f"{self.batches.batches_per_epoch:,} steps per epoch, seed {self.seed}"),
            ("state", how),
        ]
        return "\n".join(f"{k:>8}: {v}" for k, v in rows)


def train(config: TrainConfig) -> int:
    """Run training to `stop_at` or `max_duration`; returns the last completed step."""
    entropy = _prepare_stdlib_corpus(config) if config.data.stdlib_corpus else None
    run = Run(config)
    try:
        state, how = run.initial_state()
        start = int(state.step)
        if run.is_main:
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
            print(run.summary(start, how), flush=True)
            if entropy is not None:
                print(f"  corpus: unigram entropy {entropy:.3f} nats (a loss below it means the model uses context)")
        if start >= config.last_step:
            if run.is_main:
                print(f"Nothing to do: the run is already at step {start} (last step {config.last_step}).")
            return start
        writer = MetricsWriter(run.run_dir, start, enabled=run.is_main, tensorboard=config.tensorboard,
                               wandb=_wandb_kwargs(config) if config.wandb.enabled else None)
        speed = SpeedMonitor(run.tokens_per_step, config.model.flops_per_token(), jax.device_count())
        try:
            step, metrics = _loop(run, state, start, writer, speed)
        except DataError as e:  # e.g. a remote file failing for good mid-run, raised from the prefetch thread
            raise DataError(f"{e}\nThe run stopped; {_last_good(run)}.") from e
        finally:
            writer.close()
        if run.is_main and "train/loss" in metrics:
            versus = f" (corpus unigram entropy {entropy:.3f} nats)" if entropy is not None else ""
            ended = "Finished" if step == config.last_step else "Stopped"
            print(f"{ended} at step {step}: loss {metrics['train/loss']:.4f}{versus}; checkpoints in "
                  f"{run.checkpointer.directory}")
        return step
    finally:
        run.checkpointer.wait()
        run.checkpointer.close()


def _prepare_stdlib_corpus(config: TrainConfig) -> float:
    """Process 0 builds the quickstart corpus if it is missing; the others wait for it."""
    if jax.process_index() == 0:
        ensure_stdlib_corpus(config.data.paths[0], config.tokenizer)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("stdlib corpus built")
    return unigram_entropy(config.data.paths[0], config.data.memmap_dtype)


def _loop(
    run: Run, state: TrainState, start: int, writer: MetricsWriter, speed: SpeedMonitor
) -> tuple[int, dict[str, float]]:
    """Train from `start`; returns the last completed step and the last logged metrics."""
    config = run.config
    last = config.last_step
    step = start
    host: dict[str, float] = {}
    pending_health: tuple[int, jax.Array, dict[str, jax.Array]] | None = None
    bar = tqdm(total=last, initial=start, unit="step", dynamic_ncols=True, disable=None if run.is_main else True)
    with StopRequest() as stop, run.batches.prefetch(start, last, config.data.prefetch_depth) as batches:
        for batch_step, local_batch in batches:
            batch = jax.make_array_from_process_local_data(run.batch_sharding, local_batch)
            state, metrics = run.train_step(state, batch)
            step = batch_step + 1
            # Check the previous step's health now that this one is queued: no device idle time per step.
            if pending_health is not None:
                _raise_if_unhealthy(run, *pending_health)
            pending_health = (step, metrics.pop("healthy"), metrics)
            speed.tick()
            if step == start + 1:
                speed.reset()  # the first step includes compilation
                speed.tick()
            bar.update(1)
            if step % config.console_log_interval == 0 or step == last:
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _raise_if_unhealthy(run, *pending_health)
                host |= speed.metrics() | {"throughput/total_tokens": step * run.tokens_per_step}
                host["train/perplexity"] = math.exp(min(host["train/loss"], 700.0))
                seconds = speed.step_time()
                eta = seconds * (last - step) if seconds else None
                writer.write(step, host)
                if run.is_main:
                    bar.write(console_line(step, last, host, eta) + ("" if "throughput/mfu" in host or step == last
                                                                     else f" | {speed.mfu_note()}"))
            paused = False  # checkpointing and evaluation time is not training time
            stopping = stop.check(step)
            if step % config.save_interval == 0 or step == last or stopping:
                _raise_if_unhealthy(run, *pending_health)
                run.save(state, step)
                paused = True
            if stopping:
                run.checkpointer.wait()  # say "saved" only once it is
                if run.is_main:
                    bar.write(f"Stopped by {stopping} after step {step}; checkpoint saved in "
                              f"{run.checkpointer.directory / str(step)}. Rerun the same command to resume.")
                break
            if run.evaluators is not None and (step % config.eval_interval == 0 or step == last):
                _raise_if_unhealthy(run, *pending_health)
                results = run.evaluators(state.params)
                writer.write(step, results)
                if run.is_main:
                    bar.write(f"eval at step {step} | " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()))
                paused = True
            if paused:
                speed.reset()
    bar.close()
    return step, host


def _raise_if_unhealthy(run: Run, step: int, healthy: jax.Array, metrics: dict[str, jax.Array]) -> None:
    if bool(healthy):
        return
    loss, grad_norm = float(metrics["train/loss"]), float(metrics["train/grad_norm"])
    raise TrainingError(
        f"Non-finite training signal at step {step}: loss={loss}, grad_norm={grad_norm}. The run stopped before "
        f"applying that update; {_last_good(run)}. Lower optimizer.learning_rate, check the data at this step "
        "(tools/inspect_data.py), or enable softmax_auxiliary_loss (z-loss)."
    )


def _last_good(run: Run) -> str:
    run.checkpointer.wait()
    step = run.checkpointer.latest_step()
    if step is None:
        return "there is no checkpoint yet"
    return f"the last good checkpoint is step {step} in {run.checkpointer.directory}; rerun the command to resume"


def _wandb_kwargs(config: TrainConfig) -> dict[str, Any]:
    w = config.wandb
    return {"project": w.project, "entity": w.entity, "group": w.group, "name": w.name or config.run_name,
            "config": dataclasses.asdict(config)}


__all__ = ["Layout", "Run", "TrainingError", "train"]
