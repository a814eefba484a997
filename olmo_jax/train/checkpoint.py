"""Checkpoints: a thin wrapper around Orbax's v0 `CheckpointManager`.

A run directory keeps its checkpoints under `<save_folder>/checkpoints/<step>/` with three items: `params`, `opt_state`
(absent in weights-only checkpoints such as a converted HF model) and `meta`, a JSON record (the model's
architecture, the resolved train config, the data fingerprint, tokens seen, package versions, the optimizer state's
layout). How the run ran (compute dtype, attention, remat) is recorded for information under `run` and never
restored: readers choose their own. Orbax writes each step to a temporary directory and renames it when complete, so
a crash or kill never leaves a step that `latest_step` would pick.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from olmo_jax.errors import CheckpointError, ConfigError
from olmo_jax.model.config import ModelConfig
from olmo_jax.model.transformer import param_shapes

ITEMS = ("params", "opt_state", "meta")


def package_versions() -> dict[str, str]:
    names = ("olmo_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class Checkpointer:
    """Save and restore train state under `<directory>/<step>/`, keeping the newest `max_to_keep` steps.

    `read_only` is for readers of another run's checkpoints (tools, load_path): they must neither create anything
    nor clean up temporary step directories, which may be saves still in flight in a live run.
    """

    def __init__(
        self, directory: str | Path, max_to_keep: int | None = None, async_save: bool = True, read_only: bool = False
    ) -> None:
        self.directory = Path(directory).absolute()
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
        else:
            options = ocp.CheckpointManagerOptions(
                create=True,
                cleanup_tmp_directories=True,  # half-written steps of this run's killed predecessor are removed
                enable_async_checkpointing=async_save,
                preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep) if max_to_keep else None,
            )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        """The newest complete step, or None. Unfinished (temporary) step directories are ignored."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, params: Any, meta: dict[str, Any], opt_state: Any = None) -> None:
        """Start an asynchronous save of `step`; `wait()` (or the next save) completes it."""
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(_jsonable(meta))}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def meta(self, step: int) -> dict[str, Any]:
        return self._restore(step, meta=ocp.args.JsonRestore())["meta"]

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any = None) -> tuple[Any, Any, dict]:
        """Restore `step` into the shapes, dtypes and shardings of the abstract trees (ShapeDtypeStructs).

        The shardings may differ from those at save time (a different mesh): Orbax reshards on read.
        `abstract_opt_state=None` restores weights only.
        """
        items = {"params": ocp.args.StandardRestore(abstract_params), "meta": ocp.args.JsonRestore()}
        if abstract_opt_state is not None:
            if not (self.directory / str(step) / "opt_state").exists():
                raise CheckpointError(
                    f"Checkpoint {self.directory / str(step)} holds weights only (no optimizer state); load it "
                    "with reset_optimizer_state=True to start a new optimizer from these weights."
                )
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        restored = self._restore(step, **items)
        return restored["params"], restored.get("opt_state"), restored["meta"]

    def _restore(self, step: int, **items: Any) -> dict[str, Any]:
        try:
            result = self._manager.restore(step, args=ocp.args.Composite(**items))
        except FileNotFoundError as e:
            raise CheckpointError(
                f"Checkpoint step {step} in {self.directory} is incomplete or corrupt ({e}). "
                f"{self._fallback(step)}"
            ) from e
        except (ValueError, KeyError, OSError) as e:
            raise CheckpointError(
                f"Checkpoint step {step} in {self.directory} cannot be read into this model ({type(e).__name__}: "
                f"{e}). If it is corrupt: {self._fallback(step)} If the model config changed, restore with the "
                "config it was saved with."
            ) from e
        return dict(result.items())

    def _fallback(self, step: int) -> str:
        earlier = [s for s in self.all_steps() if s < step]
        if not earlier:
            return f"There is no earlier checkpoint: delete {self.directory / str(step)} to start over."
        return f"Delete {self.directory / str(step)} to fall back to the previous step {earlier[-1]}."

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _jsonable(value: Any) -> Any:
    """Orbax's JsonSave takes plain Python types only (numpy scalars raise)."""
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def resolve(path: str | Path) -> tuple[Path, int | None]:
    """A run directory, its `checkpoints/` directory or one step directory → (checkpoints root, step or None)."""
    path = Path(path).absolute()
    if not path.exists():
        raise CheckpointError(f"Checkpoint path {path} does not exist.")
    if path.name.isdigit() and (path / "meta").exists():
        return path.parent, int(path.name)
    if (path / "checkpoints").is_dir():
        return path / "checkpoints", None
    return path, None


def model_config_from_meta(meta: dict[str, Any]) -> ModelConfig:
    """The architecture a checkpoint was saved with (records of olmo_jax < 0.2 also carry run options: ignored)."""
    if "model" not in meta:
        raise CheckpointError(f"Checkpoint metadata has no model config (keys: {sorted(meta)}).")
    try:
        return ModelConfig.from_record(meta["model"])
    except ConfigError as e:
        raise CheckpointError(f"Checkpoint metadata has no usable model config: {e}") from None


def tokenizer_of(meta: dict[str, Any]) -> str | None:
    """The tokenizer a checkpoint's run was configured with (None for weights-only checkpoints, e.g. from HF)."""
    return meta.get("config", {}).get("tokenizer")


def open_step(path: str | Path) -> tuple[Checkpointer, int]:
    """A run directory, its checkpoints/ folder or a step folder → (its Checkpointer, the step: given, else the
    newest complete one). The caller closes the Checkpointer."""
    root, step = resolve(path)
    checkpointer = Checkpointer(root, read_only=True)
    step = checkpointer.latest_step() if step is None else step
    if step is None:
        checkpointer.close()
        raise CheckpointError(f"{path} holds no complete checkpoint (looked in {root}).")
    return checkpointer, step


def load_params(path: str | Path) -> tuple[ModelConfig, Any, dict[str, Any]]:
    """Weights of the newest complete step under `path` (or of the step directory `path`), on the default device.

    Returns (model config, params, meta). The caller chooses how to run the model (RunOptions): nothing about it is
    taken from the checkpoint.
    """
    checkpointer, step = open_step(path)
    try:
        config = model_config_from_meta(checkpointer.meta(step))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), param_shapes(config))
        params, _, meta = checkpointer.restore(step, abstract)
        return config, params, meta
    finally:
        checkpointer.close()


def save_params(path: str | Path, config: ModelConfig, params: Any, step: int = 0, **meta: Any) -> Path:
    """Write a weights-only checkpoint (e.g. converted from HF) that training's `load_path` and the tools read."""
    root = Path(path).absolute() / "checkpoints"
    checkpointer = Checkpointer(root, async_save=False)
    try:
        checkpointer.save(step, params, {"model": config, "step": step, "versions": package_versions(), **meta})
        checkpointer.wait()
    finally:
        checkpointer.close()
    return root / str(step)
