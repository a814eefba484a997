"""Where a run's state comes from (its own newest checkpoint that verifies, `load_path`, or a fresh initialisation)
and the checks that a checkpoint fits the run: the same architecture, the same data, the same optimizer.

A checkpoint records its model's architecture, the data fingerprint (files, sizes, dtype, sequence length, seed,
global batch size: what decides the batch of every step) and the run's config. Resuming or continuing a full state
from a checkpoint made for another architecture or other data is refused with the differences listed, unless
`allow_resume_mismatch`; one made with other optimizer, LR-schedule or clipping settings, unless
`allow_optimizer_change`; a difference in parameter shapes is refused always. How the model runs (RunOptions) is
never compared: the run chooses it.

A damaged step of the run's own (a truncated file, an array that fails its checksum, unusable metadata) is never
resumed from: the newest step that verifies is, and the damaged ones are reported for the trainer to set aside.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from olmo_jax.data.config import is_url
from olmo_jax.data.token_files import TokenFiles
from olmo_jax.errors import CheckpointDamagedError, CheckpointError, TrainingError
from olmo_jax.model.config import ModelConfig
from olmo_jax.model.hf import load_hf
from olmo_jax.model.transformer import param_shapes
from olmo_jax.train.checkpoint import Checkpointer, read_newest
from olmo_jax.train.config import OptimizerConfig
from olmo_jax.train.olmo_config import map_olmo_config
from olmo_jax.train.olmo_files import fetch_olmo_checkpoint, is_olmo_checkpoint
from olmo_jax.train.olmo_native import decayed_names, read_olmo_checkpoint
from olmo_jax.train.optim import (
    OPT_STATE_LAYOUT,
    decay_mask,
    from_legacy_opt_state,
    legacy_opt_state,
    with_adam_moments,
)
from olmo_jax.train.step import GuardState, JittedStep, TrainState, fresh_guard, new_state

# Architecture fields that change what the model computes without changing parameter shapes: compared for every
# kind of load. The rest (initialisation, vocab_size, eos/pad) matter to a run's continuation only.
COMPUTE_FIELDS = ("clip_qkv", "rope_theta", "layer_norm_eps")


def data_fingerprint(files: TokenFiles, seed: int, global_batch_size: int) -> dict[str, Any]:
    """What decides which instances each step sees: the files, the seed and the global batch size."""
    return {**files.fingerprint(), "seed": seed, "global_train_batch_size": global_batch_size}


def model_differences(saved: ModelConfig, config: ModelConfig, weights_only: bool) -> tuple[list[str], bool]:
    """`model.<field>: saved vs config` for each field that differs, and whether the parameter shapes differ (then
    nothing can be restored). A weights-only load (an HF directory, reset_optimizer_state) starts a new run from the
    weights, so only what they compute is compared; continuing a run compares the whole architecture."""
    shapes_differ = param_shapes(saved) != param_shapes(config)
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    if weights_only and not shapes_differ:
        names = list(COMPUTE_FIELDS)
    return [f"model.{k}: {getattr(saved, k)!r} vs {getattr(config, k)!r}" for k in names
            if getattr(saved, k) != getattr(config, k)], shapes_differ


def check_compatible(saved_model: ModelConfig, saved_data: dict[str, Any] | None, config: ModelConfig,
                     fingerprint: dict[str, Any], allow_mismatch: bool, weights_only: bool, where: Path,
                     fix: str) -> None:
    """Refuse to continue from a checkpoint made for another model or other data, unless allowed."""
    problems, shapes_differ = model_differences(saved_model, config, weights_only)
    if saved_data is not None and saved_data != fingerprint:
        changed = sorted(k for k in fingerprint if saved_data.get(k) != fingerprint[k])
        problems.append(f"data ({', '.join(changed)}): {[saved_data.get(k) for k in changed]} vs "
                        f"{[fingerprint[k] for k in changed]}")
    if shapes_differ:
        listing = "\n  - ".join(problems)
        raise TrainingError(f"{where} does not fit config.model (checkpoint vs config):\n  - {listing}")
    if problems and not allow_mismatch:
        raise TrainingError(
            f"{where} was made for another run (checkpoint vs config):\n  - " + "\n  - ".join(problems)
            + f"\n{fix}, or set --config.allow_resume_mismatch=True to continue anyway."
        )


@dataclasses.dataclass(frozen=True)
class StateSource:
    """What `initial_state` needs to know about the run."""

    model: ModelConfig
    fingerprint: dict[str, Any]
    optimizer: dict[str, Any]  # `optimizer_settings` of the run's config
    load_path: str | None
    reset_optimizer_state: bool
    allow_mismatch: bool
    allow_optimizer_change: bool
    init_fn: str
    seed: int
    batches_per_epoch: int | None = None  # of the run's data: where an OLMo checkpoint's data position lies


def optimizer_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What decides each AdamW update, from a run's config in the config files' layout (TrainConfig.to_dict(), or
    the record of a checkpoint, also of olmo_jax 0.1): the optimizer and scheduler sections with the schedule's
    effective length (scheduler.t_max, else max_duration), the clipping threshold, the z-loss switch and the loss
    normalisation (absent from earlier checkpoints: then "targets", the only one there was)."""
    scheduler = dict(config.get("scheduler") or {})
    scheduler["t_max"] = scheduler.get("t_max") or config.get("max_duration")
    settings = {"optimizer": config.get("optimizer"), "scheduler": scheduler,
                "max_grad_norm": config.get("max_grad_norm"),
                "softmax_auxiliary_loss": config.get("softmax_auxiliary_loss"),
                "loss_normalization": config.get("loss_normalization") or "targets"}
    return json.loads(json.dumps(settings))  # tuples and lists compare alike, as they come back from JSON


def optimizer_differences(saved: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """`key: saved vs config` for each optimizer setting that differs (flattened, `optimizer.learning_rate`)."""

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    a, b = flat(saved), flat(config)
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run starts: the state, how it came about (for the summary) and its own damaged steps, newest first,
    each with why (for the trainer to set aside and report)."""

    state: TrainState
    how: str
    damaged: tuple[tuple[int, str], ...] = ()


def initial_state(source: StateSource, jitted: JittedStep, checkpointer: Checkpointer | None,
                  schedule: optax.Schedule) -> Start:
    """Resume from the newest step of this run's checkpoints (`checkpointer`, read-only, None when there are none)
    that verifies, else start from load_path, else initialise. `schedule` is the optimizer's, for checkpoints of
    the earlier optimizer-state layout."""
    damaged: list[tuple[int, str]] = []
    steps = checkpointer.all_steps() if checkpointer is not None else []
    for step in reversed(steps):
        try:
            state, how = restore(source, jitted, checkpointer, step, schedule, resuming=True)
        except CheckpointDamagedError as e:
            damaged.append((step, str(e)))
            continue
        return Start(state, how + (f" (steps {[s for s, _ in damaged]} are damaged)" if damaged else ""),
                     tuple(damaged))
    if damaged:
        listing = "\n  - ".join(why for _, why in damaged)
        raise CheckpointError(
            f"Every checkpoint in {checkpointer.directory} is damaged, so the run cannot resume:\n  - {listing}\n"
            "Nothing was changed. Move the damaged steps away to start this run again from scratch, or use a new "
            "save_folder.")
    if source.load_path:
        path = fetch_olmo_checkpoint(source.load_path) if is_url(source.load_path) else Path(source.load_path)
        if is_olmo_checkpoint(path):
            return Start(*restore_olmo(source, jitted, path, schedule))
        if (path / "config.json").exists():  # a Hugging Face directory: weights only
            hf_config, params = load_hf(path)
            check_compatible(hf_config, None, source.model, source.fingerprint, source.allow_mismatch, True, path,
                             "Use a config matching the HF model")
            return Start(fresh_optimizer(params, jitted), f"loaded weights from HF directory {path}")
        return Start(*read_newest(path, lambda reader, step: restore(source, jitted, reader, step, schedule,
                                                                      resuming=False)))
    return Start(jitted.init(jax.random.key(source.seed)), f"initialised ({source.init_fn} init)")


def restore(source: StateSource, jitted: JittedStep, checkpointer: Checkpointer, step: int,
            schedule: optax.Schedule, resuming: bool) -> tuple[TrainState, str]:
    """The full state of `step` (resume, or load_path), or its weights alone with a new optimizer at step 0 (a
    weights-only checkpoint such as a converted HF model, or load_path with reset_optimizer_state)."""
    where = checkpointer.directory / str(step)
    meta = checkpointer.meta(step)
    saved_model = checkpointer.model_config(step, meta)
    weights_only = not (where / "opt_state").exists() or (source.reset_optimizer_state and not resuming)
    fix = ("Use a new save_folder for a different run" if resuming else
           "Set --config.reset_optimizer_state=True to take only its weights")
    check_compatible(saved_model, None if weights_only else meta.get("data_fingerprint"), source.model,
                     source.fingerprint, source.allow_mismatch, weights_only, where, fix)
    if not weights_only and isinstance(meta.get("config"), dict):
        changed = optimizer_differences(optimizer_settings(meta["config"]), source.optimizer)
        if changed and not source.allow_optimizer_change:
            raise TrainingError(
                f"{where} was trained with other optimizer settings (checkpoint vs config):\n  - "
                + "\n  - ".join(changed) + "\nResuming with them would change the updates mid-run (a larger LR can "
                "wreck the model in one step). Use the checkpoint's settings, or set "
                "--config.allow_optimizer_change=True if the change is deliberate.")
    abstract = jitted.abstract_state
    if weights_only:
        params, _, _ = checkpointer.restore(step, abstract.params)
        return fresh_optimizer(params, jitted), f"loaded the weights of {where} (new optimizer state, step 0)"
    layout = meta.get("opt_state_layout", 1)
    if layout == OPT_STATE_LAYOUT:
        params, opt_state, _ = checkpointer.restore(step, abstract.params, abstract.opt_state)
    elif layout == 1:
        params, legacy, _ = checkpointer.restore(step, abstract.params, legacy_opt_state(abstract.opt_state))
        opt_state = jax.jit(lambda s: from_legacy_opt_state(s, abstract.opt_state, schedule),
                            out_shardings=jitted.state_shardings.opt_state)(legacy)
    else:
        raise CheckpointError(f"{where} has optimizer-state layout {layout}, newer than this olmo_jax reads "
                              f"({OPT_STATE_LAYOUT}); upgrade olmo_jax.")
    guard = jax.device_put(saved_guard(meta, abstract.guard.recent.shape[0]), jitted.state_shardings.guard)
    state = TrainState(jnp.asarray(step, jnp.int32), params, opt_state, jnp.asarray(True), guard)
    return state, f"{'resumed from' if resuming else 'loaded the full state of'} {where}"


def restore_olmo(source: StateSource, jitted: JittedStep, path: Path,
                 schedule: optax.Schedule) -> tuple[TrainState, str]:
    """The full state of an OLMo unsharded checkpoint (load_path; docs/olmo-exchange.md): its weights, Adam moments
    and step, after checking that its config.yaml describes this run (architecture, data, optimizer, loss
    normalisation, decay groups) and that its data position is this run's position at that step. With
    reset_optimizer_state, its weights alone at step 0."""
    where = path / "config.yaml"
    olmo = read_olmo_checkpoint(path, weights_only=source.reset_optimizer_state,
                                batches_per_epoch=source.batches_per_epoch)
    fix = "Use a config derived from its config.yaml (--config=configs/olmo_yaml.py:" + str(where) + ")"
    if source.reset_optimizer_state:
        check_compatible(olmo.model, None, source.model, source.fingerprint, source.allow_mismatch, True, path,
                         "Use a config matching its model section")
        return (fresh_optimizer(olmo.params, jitted),
                f"loaded the weights of OLMo checkpoint {path} (new optimizer state, step 0)")
    mapped = map_olmo_config(olmo.olmo_config, str(where))
    nested = mapped.nested()
    saved_data = {"seed": nested["data"]["seed"] if nested["data"]["seed"] is not None else nested["seed"],
                  "global_train_batch_size": nested["global_train_batch_size"],
                  "files": [Path(p).name for p in nested["data"]["paths"]]}
    ours = {"seed": source.fingerprint.get("seed"),
            "global_train_batch_size": source.fingerprint.get("global_train_batch_size"),
            "files": [Path(str(p)).name for p in source.fingerprint.get("paths", [])]}
    check_compatible(olmo.model, None, source.model, source.fingerprint, source.allow_mismatch, False, path, fix)
    data_changes = [f"data {k}: {saved_data[k]!r} vs {ours[k]!r}" for k in ours if saved_data[k] != ours[k]]
    if data_changes and not source.allow_mismatch:
        raise TrainingError(f"{path} was made for other data (checkpoint vs config):\n  - " + "\n  - ".join(
            data_changes) + f"\n{fix}, or set --config.allow_resume_mismatch=True to continue anyway.")
    saved = optimizer_settings(nested)
    notes = ""
    if mapped.notes:
        saved["loss_normalization"] = source.optimizer.get("loss_normalization")  # unknown: the run's choice
        notes = " (" + " ".join(mapped.notes) + ")"
    changed = optimizer_differences(saved, source.optimizer)
    if changed and not source.allow_optimizer_change:
        raise TrainingError(
            f"{path} was trained with other optimizer settings (checkpoint vs config):\n  - " + "\n  - ".join(changed)
            + f"\n{fix}, or set --config.allow_optimizer_change=True if the change is deliberate.")
    ours_decay = decayed_names(olmo.model, decay_mask(olmo.params, OptimizerConfig(**source.optimizer["optimizer"])))
    if ours_decay != olmo.decayed:
        raise TrainingError(
            f"{path}/optim.pt decays other parameters than this run's optimizer settings: it decays "
            f"{sorted(olmo.decayed - ours_decay)[:4]} more and {sorted(ours_decay - olmo.decayed)[:4]} less. Set "
            "optimizer.decay_embeddings / optimizer.decay_norm_and_bias to match it.")
    gbs = source.fingerprint.get("global_train_batch_size")
    if source.batches_per_epoch is not None and olmo.examples_seen != olmo.step * gbs:
        raise TrainingError(
            f"{path}/train.pt is at step {olmo.step} with {olmo.examples_seen:,} examples seen (epoch {olmo.epoch}), "
            f"but this run reaches step {olmo.step} after {olmo.step * gbs:,} (a batch size changed mid-run, or "
            "fast_forward_batches was used), so the next batch would not be OLMo's. Not supported: continue it "
            "with OLMo's trainer, or load its weights alone with --config.reset_optimizer_state=True.")
    abstract = jitted.abstract_state
    opt_state = jax.jit(lambda mu, nu: with_adam_moments(abstract.opt_state, mu, nu, olmo.step, schedule),
                        out_shardings=jitted.state_shardings.opt_state)(olmo.mu, olmo.nu)
    guard = jax.device_put(fresh_guard(abstract.guard.recent.shape[0]), jitted.state_shardings.guard)
    state = TrainState(jnp.asarray(olmo.step, jnp.int32), jax.device_put(olmo.params, jitted.state_shardings.params),
                       opt_state, jnp.asarray(True), guard)
    return state, f"loaded the full state of OLMo checkpoint {path} (step {olmo.step}){notes}"


def saved_guard(meta: dict[str, Any], window: int) -> GuardState:
    """The spike guard's recent losses as the checkpoint saved them, so a resumed run judges its first steps against
    the same history; fresh when there are none of this window's length (a checkpoint before the guard, another
    window)."""
    saved = meta.get("loss_spike_guard")
    try:
        if saved is not None and len(saved["recent"]) == window:
            return GuardState(jnp.asarray(saved["recent"], jnp.float32), jnp.asarray(saved["seen"], jnp.int32),
                              jnp.asarray(saved["skips"], jnp.int32))
    except (KeyError, TypeError, ValueError):
        pass
    return fresh_guard(window)


def fresh_optimizer(params: Any, jitted: JittedStep) -> TrainState:
    """Step 0 of a new run from these weights: a new optimizer state, laid out on the mesh."""
    params = jax.device_put(params, jitted.state_shardings.params)
    window = jitted.abstract_state.guard.recent.shape[0]
    make = jax.jit(lambda p: new_state(p, jitted.optimizer, window), out_shardings=jitted.state_shardings)
    return make(params)
