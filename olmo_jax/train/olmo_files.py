"""OLMo's checkpoint files, read without running code, and fetched from URLs (docs/olmo-exchange.md).

`.pt` files are read with `torch.load(weights_only=True)` and an allowlist of the few non-tensor types OLMo's
`train.pt` holds; anything else is refused, naming the file and the type. OLMo's safetensors files are read without
torch, their keys decoded by an unpickler that admits no globals. torch is needed only for `.pt` files
(`pip install -e ".[olmo]"`). A checkpoint at an http(s)://, gs:// or s3:// URL is fetched once into the cache.
"""

from __future__ import annotations

import base64
import io
import pathlib
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax.errors import ConversionError

MODEL_FILES = ("model.safetensors", "model.pt")  # OLMo tries safetensors first
OPTIM_FILES = ("optim.safetensors", "optim.pt")
TRAIN_FILES = ("train.safetensors", "train.pt")
CONFIG_FILE = "config.yaml"
OLMO_EXTRA = 'pip install -e ".[olmo]"'


def is_olmo_checkpoint(path: str | Path) -> bool:
    """Whether `path` is an OLMo unsharded checkpoint directory (config.yaml and model.pt or model.safetensors)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and any((path / f).is_file() for f in MODEL_FILES)


def torch_module() -> Any:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"Reading or writing OLMo's .pt files needs PyTorch, which is not installed: "
                              f"{OLMO_EXTRA} (a CPU build is enough).") from None
    return torch


def _safe_globals() -> list[Any]:
    """The non-tensor types OLMo's train.pt holds: pathlib paths (its checkpoint lists) and the NumPy RNG state (an
    ndarray with its dtype). NumPy 2 renamed numpy.core, which files written under NumPy 1 name."""
    import numpy.dtypes

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    allowed: list[Any] = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath,
                          np.ndarray, np.dtype, numpy.dtypes.UInt32DType, numpy.dtypes.Int64DType,
                          numpy.dtypes.Float64DType]
    for name in ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"):
        allowed.append((reconstruct, name))
    for name in ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"):
        scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
        allowed.append((scalar, name))
    return allowed


def load_pt(path: Path) -> Any:
    """torch.load without running code: tensors, plain containers and the allowlisted types only."""
    torch = torch_module()
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"an object of type {found.group(1)}" if found else "a type outside the allowlist"
        raise ConversionError(
            f"{path} holds {what}, which olmo_jax does not unpickle (unpickling can run arbitrary code); only "
            "tensors, plain containers, pathlib paths and NumPy RNG states are read. Re-save the file without it."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ConversionError(f"{path} cannot be read as a PyTorch file: {str(e).splitlines()[0]}") from None


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


def _plain_unpickle(data: bytes) -> Any:
    return _NoGlobals(io.BytesIO(data)).load()


def _decoded_key(key: str) -> tuple[tuple[Any, ...], bool]:
    """An OLMo safetensors key → (key path, value is pickled); a key that is not one of OLMo's (a plain tensor name,
    or a pickle that would need a global) is the plain name."""
    try:
        decoded = _plain_unpickle(base64.urlsafe_b64decode(key))
    except (ValueError, TypeError, EOFError, KeyError, IndexError, OverflowError, pickle.UnpicklingError):
        return (key,), False
    if (isinstance(decoded, tuple) and len(decoded) == 2 and isinstance(decoded[0], tuple) and decoded[0]
            and all(isinstance(k, str | int) for k in decoded[0]) and isinstance(decoded[1], bool)):
        return decoded[0], decoded[1]
    return (key,), False


def load_safetensors_state(path: Path) -> dict[str, Any]:
    """A state dict OLMo saved with `olmo.safetensors_util` (keys: base64 pickles of (key path, is-pickled)), or a
    plain flat safetensors file; values as NumPy arrays, nested as the key paths say."""
    from safetensors import safe_open

    state: dict[str, Any] = {}
    with safe_open(path, framework="numpy") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            value = f.get_tensor(key)
            keys, pickled = _decoded_key(key)
            if pickled:
                try:
                    value = _plain_unpickle(value.tobytes())
                except pickle.UnpicklingError as e:
                    raise ConversionError(f"{path}: entry {'.'.join(map(str, keys))} holds a pickled object "
                                          f"({e}); olmo_jax reads only plain values.") from None
            node = state
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
    return state


def first_file(path: Path, names: tuple[str, ...]) -> Path | None:
    return next((path / n for n in names if (path / n).is_file()), None)


def read_state_file(path: Path, names: tuple[str, ...], what: str) -> Any:
    """The first of `names` in `path` (safetensors before .pt), or a ConversionError saying it is missing."""
    file = first_file(path, names)
    if file is None:
        raise ConversionError(f"{path} has no {' or '.join(names)} ({what}); is it an OLMo unsharded checkpoint "
                              "(stepN-unsharded)?")
    return load_safetensors_state(file) if file.suffix == ".safetensors" else load_pt(file)


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (or array) as a float32 NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().to(dtype=torch_module().float32).cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def read_config_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load((path / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConversionError(f"{path / CONFIG_FILE} cannot be read: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ConversionError(f"{path / CONFIG_FILE} is not an OLMo TrainConfig (it has no model section).")
    return config


def fetch_olmo_checkpoint(url: str, cache: Path | None = None) -> Path:
    """A local copy of the OLMo checkpoint at `url` (http(s)://, gs://, s3://): its config.yaml, weights, optimizer
    and trainer files fetched once into `cache` (default `<olmo_jax cache>/olmo-checkpoints/`), each resumable and
    size-checked (olmo_jax/data/download.py); a file already whole is not fetched again."""
    import hashlib

    from olmo_jax.data.assets import cache_dir
    from olmo_jax.data.download import download
    from olmo_jax.errors import DownloadError

    url = url.rstrip("/")
    folder = (cache or cache_dir() / "olmo-checkpoints") / (
        hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + url.rsplit("/", 1)[-1])
    if not url.startswith(("http://", "https://")):
        return _fetch_via_store(url, folder)
    download(f"{url}/{CONFIG_FILE}", folder / CONFIG_FILE)
    for names, required in ((MODEL_FILES, True), (OPTIM_FILES, False), (TRAIN_FILES, False)):
        for name in names:
            try:  # retried and resumed by download; a file the server does not have is the next name's turn
                download(f"{url}/{name}", folder / name)
            except DownloadError as e:
                if getattr(e, "code", None) == 404:
                    continue
                raise
            break
        else:
            if required:
                raise ConversionError(f"{url} has none of {', '.join(names)}; is it an OLMo unsharded checkpoint?")
    return folder


def _fetch_via_store(url: str, folder: Path) -> Path:
    """gs:// and s3:// through tensorstore (olmo_jax/data/remote.py): each file read whole, written to a part file
    and renamed when its size is the object's."""
    import os

    from olmo_jax.data.config import RemoteOptions
    from olmo_jax.data.remote import RemoteStore
    from olmo_jax.errors import RemoteError

    store = RemoteStore(RemoteOptions(retries=8, backoff=0.5, timeout=60.0, concurrency=16, s3_endpoint=None,
                                      cache_dir=None, cache_chunk_bytes=1 << 20))
    folder.mkdir(parents=True, exist_ok=True)
    for names, required in (((CONFIG_FILE,), True), (MODEL_FILES, True), (OPTIM_FILES, False), (TRAIN_FILES, False)):
        for name in names:
            dest = folder / name
            try:
                size = store.size(f"{url}/{name}")
            except RemoteError:
                continue
            if not (dest.is_file() and dest.stat().st_size == size):
                chunk = 64 << 20
                part = dest.with_name(dest.name + ".part")
                with part.open("wb") as f:
                    for start in range(0, size, chunk):
                        f.write(store.read([(f"{url}/{name}", start, min(size, start + chunk))])[0])
                os.replace(part, dest)
            break
        else:
            if required:
                raise ConversionError(f"{url} has none of {', '.join(names)}; is it an OLMo unsharded checkpoint?")
    return folder
