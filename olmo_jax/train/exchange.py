"""Whole checkpoints between olmo_jax and OLMo's trainer: `export_to_olmo` (an olmo_jax checkpoint → OLMo's
`stepN-unsharded/`) and `import_from_olmo` (the reverse, as an olmo_jax run directory), used by
tools/convert_to_olmo.py and tools/convert_from_olmo.py. `load_path` reads OLMo directories directly
(olmo_jax/train/resume.py `restore_olmo`); the file formats live in olmo_jax/train/olmo_native.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from olmo_jax.config import TrainConfig, config_dict
from olmo_jax.errors import ConversionError
from olmo_jax.model.transformer import param_shapes
from olmo_jax.train.checkpoint import Checkpointer, package_versions, read_newest
from olmo_jax.train.olmo_native import (
    adamw_group_settings,
    decayed_names,
    fetch_olmo_checkpoint,
    is_url,
    read_olmo_checkpoint,
    to_olmo_config,
    write_olmo_checkpoint,
)
from olmo_jax.train.optim import (
    OPT_STATE_LAYOUT,
    adam_moments,
    decay_mask,
    from_legacy_opt_state,
    legacy_opt_state,
    lr_schedule,
    make_optimizer,
    olmo_lr,
    with_adam_moments,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def checkpoint_config(meta: dict[str, Any]) -> TrainConfig:
    """The run config a checkpoint recorded, with configs/1b.py's values for keys added since it was written."""
    base = config_dict(CONFIGS / "1b.py").to_dict()
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise ConversionError("The checkpoint records no run config (a weights-only checkpoint, e.g. from HF), so "
                              "there is no optimizer or schedule to export; tools/convert_to_hf.py takes weights.")

    def merge(into: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            elif key in into:
                into[key] = value
        return into

    return TrainConfig.from_dict(merge(base, saved))


def examples_position(step: int, global_batch: int, batches_per_epoch: int | None) -> tuple[int, int]:
    """(epoch, global_train_examples_seen_this_epoch) as OLMo's trainer records them after `step` steps: a step that
    ends an epoch still counts in it, with all of its examples seen."""
    if not batches_per_epoch or step == 0:
        return 0, step * global_batch
    epoch = (step - 1) // batches_per_epoch
    return epoch, (step - epoch * batches_per_epoch) * global_batch


def batches_per_epoch_of(fingerprint: dict[str, Any] | None, global_batch: int) -> int | None:
    """Steps per epoch of the data a checkpoint recorded (files' sizes, dtype, instance length), one process."""
    if not fingerprint or not fingerprint.get("sizes"):
        return None
    itemsize = np.dtype(fingerprint["memmap_dtype"]).itemsize
    instances = sum(size // itemsize // fingerprint["seq_len"] for size in fingerprint["sizes"])
    return instances // global_batch or None


def export_to_olmo(checkpoint: str | Path, output: str | Path) -> tuple[Path, str]:
    """Write `output/stepN-unsharded/` from an olmo_jax checkpoint (a run directory's newest step, or a step
    directory): weights, Adam moments, trainer state and config.yaml. Returns (the directory, a note or "")."""

    def read(checkpointer: Checkpointer, step: int) -> tuple[Any, ...]:
        meta = checkpointer.meta(step)
        config = checkpointer.model_config(step, meta)
        run = checkpoint_config(meta)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract_params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                                       param_shapes(config))
        optimizer = make_optimizer(run.optimizer, run.scheduler, run.max_duration, run.max_grad_norm)
        abstract_opt = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                                    jax.eval_shape(optimizer.init, abstract_params))
        has_opt = (checkpointer.directory / str(step) / "opt_state").exists()
        if not has_opt:
            params, _, _ = checkpointer.restore(step, abstract_params)
            return config, run, meta, params, None
        if meta.get("opt_state_layout", 1) == 1:
            params, legacy, _ = checkpointer.restore(step, abstract_params, legacy_opt_state(abstract_opt))
            schedule = lr_schedule(run.scheduler, run.optimizer.learning_rate, run.max_duration)
            opt_state = from_legacy_opt_state(legacy, abstract_opt, schedule)
        else:
            params, opt_state, _ = checkpointer.restore(step, abstract_params, abstract_opt)
        return config, run, meta, params, opt_state

    model, run, meta, params, opt_state = read_newest(checkpoint, read)
    step = int(meta["step"])
    params = jax.tree.map(np.asarray, params)
    gbs = run.global_train_batch_size
    epoch, seen = examples_position(step, gbs, batches_per_epoch_of(meta.get("data_fingerprint"), gbs))
    olmo_config = to_olmo_config(run.to_dict(), save_folder=str(Path(output).absolute()))
    decayed = decayed_names(model, decay_mask(params, run.optimizer))
    settings = adamw_group_settings(run.optimizer.learning_rate, tuple(run.optimizer.betas), run.optimizer.eps,
                                    run.optimizer.weight_decay) | {
        "initial_lr": run.optimizer.learning_rate, "max_grad_norm": run.max_grad_norm, "max_grad_norm_ratio": None,
        "sharded": False}
    last_lr = float(olmo_lr(run.scheduler, run.optimizer.learning_rate, max(step, 1), run.max_duration))
    note = ""
    if opt_state is None:
        mu = nu = None
        note = "weights only (the checkpoint has no optimizer state): no optim.pt, so OLMo can read it but not resume"
        count = step
    else:
        mu, nu, count = (jax.tree.map(np.asarray, x) for x in adam_moments(opt_state))
        count = int(count)
        if count != step:
            note = (f"the spike guard skipped {step - count} updates, so the moments have taken {count} steps at "
                    f"global step {step}; OLMo's schedule follows the global step")
    out = write_olmo_checkpoint(output, olmo_config, model, params, mu, nu, step, epoch, seen, decayed, settings,
                                last_lr, optimizer_steps=count)
    return out, note


def import_from_olmo(checkpoint: str, output: str | Path) -> tuple[Path, TrainConfig, int]:
    """An OLMo unsharded checkpoint (a directory or URL) → an olmo_jax run directory `output` holding its full state
    as `checkpoints/<step>/`, with the run config its config.yaml maps to (configs/olmo_yaml.py). Returns (the step
    directory, that config, the step)."""
    path = fetch_olmo_checkpoint(checkpoint) if is_url(checkpoint) else Path(checkpoint)
    root = Path(output).absolute() / "checkpoints"
    if root.exists() and any(root.iterdir()):
        raise ConversionError(f"{root} already holds checkpoints; olmo_jax never replaces one: give a new --output.")
    olmo = read_olmo_checkpoint(path)
    config = TrainConfig.from_dict(config_dict(f"{CONFIGS / 'olmo_yaml.py'}:{path}",
                                               [f"save_folder={Path(output).absolute()}"]))
    if config.model != olmo.model:
        raise ConversionError(f"{path}: its config.yaml and its tensors disagree about the model.")
    optimizer = make_optimizer(config.optimizer, config.scheduler, config.max_duration, config.max_grad_norm)
    schedule = lr_schedule(config.scheduler, config.optimizer.learning_rate, config.max_duration)
    opt_state = with_adam_moments(optimizer.init(olmo.params), olmo.mu, olmo.nu, olmo.step, schedule)
    meta = {"step": olmo.step, "model": config.model, "config": config.to_dict(),
            "tokens_seen": olmo.step * config.global_train_batch_size * config.model.max_sequence_length,
            "opt_state_layout": OPT_STATE_LAYOUT, "source": f"olmo:{checkpoint}", "versions": package_versions(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    writer = Checkpointer(root, async_save=False)
    try:
        writer.save(olmo.step, olmo.params, meta, opt_state)
    finally:
        writer.close()
    return root / str(olmo.step), config, olmo.step
