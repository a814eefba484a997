"""Whole checkpoints between olmo_jax and OLMo's trainer: `export_to_olmo` (an olmo_jax checkpoint → OLMo's
`stepN-unsharded/`) and `import_from_olmo` (the reverse, as an olmo_jax run directory), used by
tools/convert_to_olmo.py and tools/convert_from_olmo.py. `load_path` reads OLMo directories directly
(olmo_jax/train/resume.py `restore_olmo`); the formats live in olmo_jax/train/olmo_native.py, olmo_files.py and
olmo_config.py.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from olmo_jax.config import TrainConfig
from olmo_jax.data.config import is_url
from olmo_jax.errors import ConversionError
from olmo_jax.model.transformer import param_shapes
from olmo_jax.train.checkpoint import Checkpointer, package_versions, read_newest
from olmo_jax.train.olmo_config import to_olmo_config
from olmo_jax.train.olmo_files import fetch_olmo_checkpoint
from olmo_jax.train.olmo_native import (
    adamw_group_settings,
    decayed_names,
    read_olmo_checkpoint,
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


def checkpoint_config(meta: dict[str, Any], defaults: dict[str, Any]) -> TrainConfig:
    """The run config a checkpoint recorded, with `defaults` (configs/1b.py's, in the config files' layout) for keys
    added since it was written."""
    base = copy.deepcopy(defaults)
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


def export_to_olmo(checkpoint: str | Path, output: str | Path, defaults: dict[str, Any]) -> tuple[Path, str]:
    """Write `output/stepN-unsharded/` from an olmo_jax checkpoint (a run directory's newest step, or a step
    directory): weights, Adam moments, trainer state and config.yaml. `defaults`: a full config in the config files'
    layout (configs/1b.py's) for keys the checkpoint's record lacks. The weights and the optimizer state are read one
    after the other, so at most about the optimizer state's size is in memory twice. Returns (the directory, a
    note or "")."""
    return read_newest(checkpoint, lambda checkpointer, step: _export(checkpointer, step, output, defaults))


def _export(checkpointer: Checkpointer, step: int, output: str | Path, defaults: dict[str, Any]) -> tuple[Path, str]:
    meta = checkpointer.meta(step)
    model = checkpointer.model_config(step, meta)
    run = checkpoint_config(meta, defaults)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = param_shapes(model)
    abstract_params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
    optimizer = make_optimizer(run.optimizer, run.scheduler, run.max_duration, run.max_grad_norm)
    abstract_opt = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                                jax.eval_shape(optimizer.init, abstract_params))
    has_opt = (checkpointer.directory / str(step) / "opt_state").exists()
    counts: list[int] = []

    def weights() -> Any:
        return jax.tree.map(np.asarray, checkpointer.restore(step, abstract_params)[0])

    def moments() -> tuple[Any, Any, int]:
        if meta.get("opt_state_layout", 1) == 1:
            _, legacy, _ = checkpointer.restore(step, None, legacy_opt_state(abstract_opt))
            schedule = lr_schedule(run.scheduler, run.optimizer.learning_rate, run.max_duration)
            opt_state = from_legacy_opt_state(legacy, abstract_opt, schedule)
        else:
            _, opt_state, _ = checkpointer.restore(step, None, abstract_opt)
        mu, nu, count = adam_moments(opt_state)
        counts.append(int(count))
        return jax.tree.map(np.asarray, mu), jax.tree.map(np.asarray, nu), int(count)

    gbs = run.global_train_batch_size
    epoch, seen = examples_position(step, gbs, batches_per_epoch_of(meta.get("data_fingerprint"), gbs))
    settings = adamw_group_settings(run.optimizer.learning_rate, tuple(run.optimizer.betas), run.optimizer.eps,
                                    run.optimizer.weight_decay) | {
        "initial_lr": run.optimizer.learning_rate, "max_grad_norm": run.max_grad_norm, "max_grad_norm_ratio": None,
        "sharded": False}
    last_lr = float(olmo_lr(run.scheduler, run.optimizer.learning_rate, max(step, 1), run.max_duration))
    out = write_olmo_checkpoint(output, to_olmo_config(run.to_dict(), save_folder=str(Path(output).absolute())),
                                model, weights, moments if has_opt else None, step, epoch, seen,
                                decayed_names(model, decay_mask(shapes, run.optimizer)), settings, last_lr)
    if not has_opt:
        return out, ("weights only (the checkpoint has no optimizer state): no optim.pt, so OLMo can read it but not "
                     "resume it")
    if counts[0] != step:
        return out, (f"the spike guard skipped {step - counts[0]} updates, so the moments have taken {counts[0]} "
                     f"steps at global step {step}; OLMo's schedule follows the global step")
    return out, ""


def local_checkpoint(checkpoint: str | Path) -> Path:
    """An OLMo checkpoint folder, or a local copy of the one at a URL (fetched once into the cache)."""
    return fetch_olmo_checkpoint(str(checkpoint)) if is_url(str(checkpoint)) else Path(checkpoint)


def import_from_olmo(path: Path, output: str | Path, config: TrainConfig) -> tuple[Path, int]:
    """The OLMo unsharded checkpoint folder `path` → an olmo_jax run directory `output` holding its full state as
    `checkpoints/<step>/`, recorded with `config` (the run its config.yaml maps to: configs/olmo_yaml.py). Returns
    (the step directory, the step)."""
    root = Path(output).absolute() / "checkpoints"
    if root.exists() and any(root.iterdir()):
        raise ConversionError(f"{root} already holds checkpoints; olmo_jax never replaces one: give a new --output.")
    olmo = read_olmo_checkpoint(path)
    step = olmo.step
    if config.model != olmo.model:
        raise ConversionError(f"{path}: its config.yaml and its tensors disagree about the model.")
    optimizer = make_optimizer(config.optimizer, config.scheduler, config.max_duration, config.max_grad_norm)
    schedule = lr_schedule(config.scheduler, config.optimizer.learning_rate, config.max_duration)
    params, mu, nu = (_on_device(t) for t in (olmo.params, olmo.mu, olmo.nu))  # one copy of each, not two
    del olmo
    opt_state = with_adam_moments(jax.eval_shape(optimizer.init, params), mu, nu, step, schedule)
    meta = {"step": step, "model": config.model, "config": config.to_dict(),
            "tokens_seen": step * config.global_train_batch_size * config.model.max_sequence_length,
            "opt_state_layout": OPT_STATE_LAYOUT, "source": f"olmo:{path}", "versions": package_versions(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    writer = Checkpointer(root, async_save=False)
    try:
        writer.save(step, params, meta, opt_state)
    finally:
        writer.close()
    return root / str(step), step


def _on_device(tree: dict[str, Any]) -> dict[str, Any]:
    """A nested dict of NumPy arrays as jax arrays, each NumPy array let go of once copied (the dict is emptied)."""
    out = {}
    for key in list(tree):
        value = tree.pop(key)
        out[key] = _on_device(value) if isinstance(value, dict) else jax.device_put(value)
        del value
    return out
