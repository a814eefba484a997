"""Checkpoints: a thin wrapper around Orbax's v0 `CheckpointManager`, with verified restores and readers that
tolerate a live run.

A run directory keeps its checkpoints under `<save_folder>/checkpoints/<step>/` with three items: `params`, `opt_state`
(absent in weights-only checkpoints such as a converted HF model) and `meta`, a JSON record (the model's
architecture, the resolved train config, the data fingerprint, tokens seen, package versions, the optimizer state's
layout, and a content checksum of every saved array: olmo_jax/train/checksum.py). How the run ran (compute dtype,
attention, remat) is recorded for information under `run` and never restored: readers choose their own.

What is guaranteed:
- Orbax writes each step to a temporary directory and renames it when complete, so a crash or kill never leaves a
  step that `latest_step` would pick; a writer removes its killed predecessor's temporary steps when it opens.
- A restore verifies every array against its checksum: a step whose files are truncated or whose bytes changed is
  refused with `CheckpointDamagedError` naming it (resume then falls back to the newest step that verifies,
  olmo_jax/train/resume.py). Checkpoints written before olmo_jax 0.2 carry no checksums and are restored unverified.
- A failed save (a full disk, a lost mount) ends the run with `CheckpointError` naming the step, the folder and the
  last complete checkpoint, whether it fails at once or in the background (`check`).
- Readers (`open_step`, `load_params`) never change a checkpoint and never clean up. A reader through `read_newest`
  (eval, generate, the converters, `load_path`) claims its step with a small lease file under
  `<checkpoints>/.readers/` (where it may write; olmo_jax/train/leases.py), and a writer keeps every leased step
  beyond `max_to_keep` until the lease is released, so a live run does not rotate a step away while it is read. A
  step that vanishes anyway (an older writer, a reader that cannot write there) is `CheckpointVanishedError`, and
  the reader takes the newest step left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.metadata
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from olmo_jax.errors import CheckpointDamagedError, CheckpointError, CheckpointVanishedError, ConfigError
from olmo_jax.model.config import ModelConfig
from olmo_jax.model.transformer import param_shapes
from olmo_jax.train.checksum import checksums, mismatched
from olmo_jax.train.leases import KeepLeased, lease

ITEMS = ("params", "opt_state", "meta")
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a step being written: `<step>.orbax-checkpoint-tmp[-...]`
READ_ATTEMPTS = 5  # how many times a listing is retried when a step vanishes mid-listing
READ_PATIENCE_S = 60.0  # how long a reader keeps taking the newest step when the ones it picked vanish


def package_versions() -> dict[str, str]:
    names = ("olmo_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def remove_unfinished_steps(directory: Path) -> list[Path]:
    """Delete the temporary step directories a killed writer left in `directory` (its own run's: only the run's
    writer calls this, before it saves anything); returns what was removed."""
    removed = []
    if jax.process_index() == 0 and directory.is_dir():
        for path in sorted(directory.iterdir()):
            if TMP_SUFFIX in path.name and path.name.split(".")[0].isdigit():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


class Checkpointer:
    """Save and restore train state under `<directory>/<step>/`, keeping the newest `max_to_keep` steps.

    `read_only` is for readers of another run's checkpoints (tools, load_path) and for a run deciding where to start:
    they create nothing and clean nothing up (another run's temporary directories may be saves in flight).
    """

    def __init__(
        self, directory: str | Path, max_to_keep: int | None = None, async_save: bool = True, read_only: bool = False
    ) -> None:
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        _quiet_orbax_noise()
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
        else:
            self._create_directory()
            remove_unfinished_steps(self.directory)
            options = ocp.CheckpointManagerOptions(
                create=False,  # made above, with a clear error when it cannot be
                cleanup_tmp_directories=False,  # done above, synchronously: no background thread outlives an error
                enable_async_checkpointing=async_save,
                preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
                    [ocp.checkpoint_managers.LatestN(n=max_to_keep), KeepLeased(self.directory)])
                if max_to_keep else None,
            )
        self._manager = _scan(lambda: ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS),
                              self.directory)
        self._pending: int | None = None  # the step of the save in flight
        self._failed = False  # a save failed and was reported

    def _create_directory(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"Cannot create the checkpoint folder {self.directory}: {e.strerror or e}.") from e

    def latest_step(self) -> int | None:
        """The newest complete step, or None. Unfinished (temporary) step directories are ignored."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """The complete steps, oldest first (re-read from disk: a live run's may have changed)."""
        _scan(self._manager.reload, self.directory)
        return sorted(self._manager.all_steps())

    def save(self, step: int, params: Any, meta: dict[str, Any], opt_state: Any = None) -> None:
        """Start an asynchronous save of `step` (checksums of its arrays added to `meta`); `wait()`, `check()` or the
        next save completes it. A failure is a CheckpointError naming the step and the last complete checkpoint."""
        self.wait()  # Orbax waits for the save in flight anyway; a failure of it is named with its own step
        sums = {"params": checksums(params)}
        items = {"params": ocp.args.StandardSave(params)}
        if opt_state is not None:
            sums["opt_state"] = checksums(opt_state)
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        items["meta"] = ocp.args.JsonSave(_jsonable(meta | {"checksums": sums}))
        self._pending = step
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # Orbax and tensorstore raise OSError, ValueError or plain Exception
            self._fail(e)

    def check(self) -> None:
        """Raise now if the save in flight failed in the background (non-blocking)."""
        if self._pending is None or self._failed:
            return
        try:
            self._manager.check_for_errors()
        except Exception as e:  # the background save's own error, whatever its type
            self._fail(e)

    def wait(self) -> None:
        """Block until the save in flight is complete; raise if it failed (once: a failure already raised is not
        raised again)."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # the background save's own error, whatever its type
            if not self._failed:
                self._fail(e)
            return
        self.check()
        self._pending = None

    def _fail(self, error: BaseException) -> None:
        step, self._pending, self._failed = self._pending, None, True
        raise self._save_failed(step, error) from error

    def _save_failed(self, step: int | None, error: BaseException) -> CheckpointError:
        cause = error
        while cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__
        kinds = {28: "the disk is full", 30: "the file system is read-only", 122: "the disk quota is exceeded"}
        code = getattr(cause, "errno", None)
        if code is None:  # tensorstore reports an OS error inside its message: "... [os_error_code='28']"
            found = re.search(r"os_error_code='(\d+)'", str(cause))
            code = int(found[1]) if found else None
        why = kinds.get(code, _first_line(error))
        try:
            last = [s for s in self.all_steps() if s != step]
        except CheckpointError:
            last = []
        kept = f"the last complete checkpoint is step {last[-1]}" if last else "there is no complete checkpoint"
        return CheckpointError(f"Saving checkpoint step {step} to {self.directory} failed: {why}. The run stopped; "
                               f"{kept} in {self.directory}. Free space (or fix the folder) and rerun the command to "
                               "resume.")

    def meta(self, step: int) -> dict[str, Any]:
        return self._restore(step, meta=ocp.args.JsonRestore())["meta"]

    def model_config(self, step: int, meta: dict[str, Any]) -> ModelConfig:
        """The architecture `step` was saved with; unusable metadata is a CheckpointDamagedError naming the step and
        the previous one."""
        try:
            return model_config_from_meta(meta, f"Checkpoint step {step} in {self.directory}")
        except CheckpointDamagedError as e:
            raise CheckpointDamagedError(f"{e} {self._fallback(step)}") from None

    def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any = None) -> tuple[Any, Any, dict]:
        """Restore `step` into the shapes, dtypes and shardings of the abstract trees (ShapeDtypeStructs), and verify
        every array against the checksum saved with it.

        The shardings may differ from those at save time (a different mesh): Orbax reshards on read.
        `abstract_opt_state=None` restores weights only; `abstract_params=None` the optimizer state only (None
        is returned for what is not restored).
        """
        items = {"meta": ocp.args.JsonRestore()}
        if abstract_params is not None:
            items["params"] = ocp.args.StandardRestore(abstract_params)
        if abstract_opt_state is not None:
            if not (self.directory / str(step) / "opt_state").exists():
                raise CheckpointError(
                    f"Checkpoint {self.directory / str(step)} holds weights only (no optimizer state); load it "
                    "with reset_optimizer_state=True to start a new optimizer from these weights."
                )
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        restored = self._restore(step, **items)
        recorded = restored["meta"].get("checksums", {})
        for item in ("params", "opt_state"):
            if item in restored and item in recorded:
                bad = mismatched(restored[item], recorded[item])
                if bad:
                    raise CheckpointDamagedError(
                        f"Checkpoint step {step} in {self.directory} is damaged: {len(bad)} array(s) of {item} do not "
                        f"match the checksums saved with them, e.g. {bad[0]}. {self._fallback(step)}")
        return restored.get("params"), restored.get("opt_state"), restored["meta"]

    def _restore(self, step: int, **items: Any) -> dict[str, Any]:
        where = self.directory / str(step)
        if not where.is_dir():
            raise CheckpointVanishedError(f"Checkpoint step {step} is no longer in {self.directory} (deleted while "
                                          "being read: a live run keeps only its newest checkpoints).")
        try:
            result = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # a missing or truncated file surfaces from tensorstore as a plain Exception
            _quiet_abandoned_reads()
            if _vanishing(where):
                raise CheckpointVanishedError(f"Checkpoint step {step} was deleted from {self.directory} while being "
                                              "read (a live run keeps only its newest checkpoints).") from e
            raise CheckpointDamagedError(
                f"Checkpoint step {step} in {self.directory} cannot be read ({_first_line(e)}). "
                f"If it is damaged: {self._fallback(step)} If the model config changed, restore with the config it "
                "was saved with."
            ) from e
        return dict(result.items())

    def _fallback(self, step: int) -> str:
        earlier = [s for s in self.all_steps() if s < step]
        if not earlier:
            return "There is no earlier checkpoint."
        return f"The previous checkpoint is step {earlier[-1]} ({self.directory / str(earlier[-1])})."

    def set_aside(self, step: int, why: str = "damaged") -> Path:
        """Rename a step to `<step>.<why>` (kept for inspection, invisible to Orbax: neither resumed from nor counted
        by max_to_keep); returns the path."""
        target = self.directory / f"{step}.{why}"
        n = 1
        while target.exists():
            n += 1
            target = self.directory / f"{step}.{why}-{n}"
        if jax.process_index() == 0:
            os.replace(self.directory / str(step), target)
        _scan(self._manager.reload, self.directory)
        return target

    def close(self) -> None:
        """Finish the save in flight (its failure is raised) and stop Orbax's threads."""
        try:
            self.wait()
        finally:
            with contextlib.suppress(Exception) if self._failed else contextlib.nullcontext():
                self._manager.close()  # after a reported failure it raises that failure again


def _quiet_orbax_noise() -> None:
    """Keep the reports of Orbax's and tensorstore's background threads from burying olmo_jax's own error line.

    After one read of a restore, or one write of a save, fails, Orbax closes its event loop while tensorstore's other
    requests are in flight: each later completion reports `RuntimeError: Event loop is closed` through the
    unraisable hook, and the abandoned coroutines are collected unawaited. What failed is raised to the caller as a
    CheckpointError (a damaged step, a full disk); these echoes of it are dropped. Every other unraisable error
    reaches the previous hook, and `--verbosity=1` shows Orbax's own logs (olmo_jax/cli.py)."""
    previous = sys.unraisablehook
    if getattr(previous, "olmo_jax_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        closed = isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)
        abandoned = "orbax" in repr(getattr(unraisable.exc_traceback, "tb_frame", "")) or (
            "_read_array_index_and_device_put" in repr(unraisable.object))
        if not (closed or abandoned):
            previous(unraisable)

    hook.olmo_jax_quiet = True
    sys.unraisablehook = hook


def _quiet_abandoned_reads() -> None:
    """Finalise the coroutines of a failed restore now, while the interpreter can (see `_quiet_orbax_noise`)."""
    gc.collect()


def _vanishing(step_dir: Path, within_s: float = 3.0) -> bool:
    """Whether a step whose read failed is being deleted (a live run rotating it away, which takes a moment), rather
    than damaged: it is gone, or goes within `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while step_dir.is_dir():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _scan(read: Any, directory: Path) -> Any:
    """Run an Orbax call that lists step directories, again when a step vanished mid-listing (a live run rotating
    its checkpoints)."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return read()
        except (FileNotFoundError, NotADirectoryError) as e:  # a step removed between listing and reading it
            if attempt + 1 == READ_ATTEMPTS:
                raise CheckpointError(f"Cannot list the checkpoints in {directory}: {e}.") from e
    raise AssertionError("unreachable")


def _first_line(error: BaseException) -> str:
    """The first line of the innermost cause: tensorstore's own error ("OUT_OF_RANGE: Error reading ... byte range
    ...") rather than Orbax's wrapper around it."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


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


def model_config_from_meta(meta: dict[str, Any], where: str = "a checkpoint") -> ModelConfig:
    """The architecture a checkpoint was saved with (records of olmo_jax < 0.2 also carry run options: ignored)."""
    if "model" not in meta:
        raise CheckpointDamagedError(f"{where}: its metadata has no model config (keys: {sorted(meta)}).")
    try:
        return ModelConfig.from_record(meta["model"])
    except (ConfigError, TypeError) as e:
        raise CheckpointDamagedError(f"{where}: its metadata holds no usable model config ({e}).") from None


def tokenizer_of(meta: dict[str, Any]) -> str | None:
    """The tokenizer a checkpoint's run was configured with (None for weights-only checkpoints, e.g. from HF)."""
    config = meta.get("config")
    return config.get("tokenizer") if isinstance(config, dict) else None


def open_step(path: str | Path, skip: tuple[int, ...] = ()) -> tuple[Checkpointer, int]:
    """A run directory, its checkpoints/ folder or a step folder → (a read-only Checkpointer, the step: given, else
    the newest complete one not in `skip`). The caller closes the Checkpointer."""
    root, step = resolve(path)
    checkpointer = Checkpointer(root, read_only=True)
    if step is None:
        steps = [s for s in checkpointer.all_steps() if s not in skip]
        step = steps[-1] if steps else None
    if step is None:
        checkpointer.close()
        raise CheckpointError(f"{path} holds no complete checkpoint (looked in {root}).")
    return checkpointer, step


def read_newest(path: str | Path, read: Any) -> Any:
    """`read(checkpointer, step)` on the newest complete step under `path` (or the step directory `path`); if that
    step is deleted while being read (a live run rotated it away), on the newest step left, for up to
    READ_PATIENCE_S. The step is leased while it is read (`lease`), so a writer of this version keeps it; without
    the lease (an older writer, a folder the reader cannot write in), a reader slower than a run that saves every
    step and keeps one can lose many races in a row. A step the caller named is never swapped for another."""
    vanished: list[int] = []
    deadline = time.monotonic() + READ_PATIENCE_S
    while not vanished or time.monotonic() < deadline:
        checkpointer, step = open_step(path, skip=tuple(vanished))
        try:
            with lease(checkpointer.directory, step):
                if not (checkpointer.directory / str(step)).is_dir():  # rotated away before the lease was taken
                    raise CheckpointVanishedError(f"Checkpoint step {step} is no longer in {checkpointer.directory}.")
                return read(checkpointer, step)
        except CheckpointVanishedError:
            if resolve(path)[1] is not None:
                raise
            vanished.append(step)
        finally:
            checkpointer.close()
    shown = f"{vanished}" if len(vanished) <= 6 else f"[{vanished[0]}, {vanished[1]}, ..., {vanished[-1]}]"
    raise CheckpointVanishedError(f"Steps {shown} of {path} ({len(vanished)} in {READ_PATIENCE_S:.0f} s) were each "
                                  "deleted while being read; is a run with save_num_checkpoints_to_keep=1 saving very "
                                  "often? Read it again, or copy a step.")


def load_params(path: str | Path) -> tuple[ModelConfig, Any, dict[str, Any]]:
    """Weights of the newest complete step under `path` (or of the step directory `path`), on the default device,
    verified; safe on a live run (`read_newest`).

    Returns (model config, params, meta). The caller chooses how to run the model (RunOptions): nothing about it is
    taken from the checkpoint.
    """
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def read(checkpointer: Checkpointer, step: int) -> tuple[ModelConfig, Any, dict[str, Any]]:
        config = checkpointer.model_config(step, checkpointer.meta(step))
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                                param_shapes(config))
        params, _, meta = checkpointer.restore(step, abstract)
        return config, params, meta

    return read_newest(path, read)


def save_params(path: str | Path, config: ModelConfig, params: Any, step: int = 0, **meta: Any) -> Path:
    """Write a weights-only checkpoint (e.g. converted from HF) that training's `load_path` and the tools read."""
    root = Path(path).absolute() / "checkpoints"
    checkpointer = Checkpointer(root, async_save=False)
    try:
        checkpointer.save(step, params, {"model": config, "step": step, "versions": package_versions(), **meta})
    finally:
        checkpointer.close()
    return root / str(step)
