"""OLMo-native unsharded checkpoints (`stepN-unsharded/`) ↔ olmo_jax's full train state (docs/olmo-exchange.md).

OLMo's trainer writes `model.pt` (weights), `optim.pt` (torch AdamW state), `train.pt` (step, epoch, data position,
RNG states) and `config.yaml` (its TrainConfig) per checkpoint (docs/olmo_facts.md §6). This module reads such a
directory into our parameters, Adam moments and step, maps its config.yaml onto our config keys, and writes our
state back in the same layout, so a run continues across the two frameworks with the same batches and updates.

- Tensors: OLMo's `att_proj` is our q, k and v stacked along rows; `ff_proj` is up (first half) and gate (second
  half); torch Linear weights are [out, in], our kernels [in, out]. Adam's `exp_avg`/`exp_avg_sq` have the weights'
  shapes and map the same way; OLMo's per-parameter `step` is our update count.
- Safety: `.pt` files are read with `torch.load(weights_only=True)` and an allowlist of the few non-tensor types
  `train.pt` holds; anything else is refused, naming the file and the type. OLMo's safetensors files are read
  without torch, their keys decoded by an unpickler that admits no globals. torch is needed only for `.pt` files
  (`pip install -e ".[olmo]"`).
- The loss normalisation differs by OLMo version (`loss_normalization`): ai2-olmo ≤ 0.3.0 divides by B·(T−1)
  targets, ≥ 0.4.0 by B·T tokens; `olmo_version_hint` tells them apart by the keys their config.yaml dumps have.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import pathlib
import pickle
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax.errors import ConfigError, ConversionError
from olmo_jax.model.config import ModelConfig

MODEL_FILES = ("model.safetensors", "model.pt")  # OLMo tries safetensors first
OPTIM_FILES = ("optim.safetensors", "optim.pt")
TRAIN_FILES = ("train.safetensors", "train.pt")
CONFIG_FILE = "config.yaml"
# Wrapper prefixes FSDP, DDP and activation checkpointing put in front of parameter names.
_WRAPPERS = re.compile(r"(^|\.)(_fsdp_wrapped_module|module|_checkpoint_wrapped_module|_orig_mod)\.")
OLMO_EXTRA = 'pip install -e ".[olmo]"'


def is_olmo_checkpoint(path: str | Path) -> bool:
    """Whether `path` is an OLMo unsharded checkpoint directory (config.yaml and model.pt or model.safetensors)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and any((path / f).is_file() for f in MODEL_FILES)


# --- reading files ---------------------------------------------------------------------------------------------


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


def _first(path: Path, names: tuple[str, ...]) -> Path | None:
    return next((path / n for n in names if (path / n).is_file()), None)


def read_state_file(path: Path, names: tuple[str, ...], what: str) -> Any:
    """The first of `names` in `path` (safetensors before .pt), or a ConversionError saying it is missing."""
    file = _first(path, names)
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


def is_url(path: str) -> bool:
    return re.match(r"^(https?|gs|s3)://", str(path)) is not None


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


# --- tensors ---------------------------------------------------------------------------------------------------


def olmo_name(name: str) -> str:
    """A parameter name without FSDP/DDP wrapper prefixes."""
    return _WRAPPERS.sub(r"\1", name)


def to_olmo_tensors(config: ModelConfig, tree: Any) -> dict[str, np.ndarray]:
    """A tree shaped like our parameters (the weights, or an Adam moment) → OLMo's names and torch layouts."""

    def kernel(node: Any) -> np.ndarray:
        return np.asarray(node["kernel"], np.float32).T

    out = {"transformer.wte.weight": np.asarray(tree["embed_tokens"]["embedding"], np.float32)}
    for i in range(config.n_layers):
        attn, mlp = tree[f"layers_{i}"]["self_attn"], tree[f"layers_{i}"]["mlp"]
        block = f"transformer.blocks.{i}"
        out[f"{block}.att_proj.weight"] = np.concatenate([kernel(attn[p]) for p in ("q_proj", "k_proj", "v_proj")])
        out[f"{block}.attn_out.weight"] = kernel(attn["o_proj"])
        out[f"{block}.ff_proj.weight"] = np.concatenate([kernel(mlp["up_proj"]), kernel(mlp["gate_proj"])])
        out[f"{block}.ff_out.weight"] = kernel(mlp["down_proj"])
    if not config.weight_tying:
        out["transformer.ff_out.weight"] = kernel(tree["lm_head"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def olmo_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """OLMo's tensor names for this model → their torch shapes."""
    d, qkv = config.d_model, config.d_model + 2 * config.kv_heads * config.head_dim
    shapes = {"transformer.wte.weight": (config.padded_vocab, d)}
    for i in range(config.n_layers):
        block = f"transformer.blocks.{i}"
        shapes |= {f"{block}.att_proj.weight": (qkv, d), f"{block}.attn_out.weight": (d, d),
                   f"{block}.ff_proj.weight": (2 * config.mlp_inner, d),
                   f"{block}.ff_out.weight": (d, config.mlp_inner)}
    if not config.weight_tying:
        shapes["transformer.ff_out.weight"] = (config.padded_vocab, d)
    return shapes


def from_olmo_tensors(config: ModelConfig, tensors: dict[str, Any], where: str) -> dict[str, Any]:
    """OLMo's named tensors (model.pt, or one Adam moment of optim.pt) → a tree shaped like our parameters. The dict
    is consumed (emptied) as its tensors are converted, so a whole state never exists twice in memory."""
    expected = olmo_shapes(config)
    found = {olmo_name(k): tensors.pop(k) for k in list(tensors)}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ConversionError(f"{where} does not hold this model's tensors: missing {missing[:5]}"
                              f"{' …' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{' …' if len(unexpected) > 5 else ''}. Does config.yaml describe this checkpoint?")
    for name, shape in expected.items():
        if tuple(found[name].shape) != shape:
            raise ConversionError(f"{where}: {name} has shape {tuple(found[name].shape)}, but config.yaml implies "
                                  f"{shape}.")
    d, kv, hidden = config.d_model, config.kv_heads * config.head_dim, config.mlp_inner

    def take(name: str) -> np.ndarray:
        return to_numpy(found.pop(name))

    def kernel(w: np.ndarray) -> dict[str, np.ndarray]:
        return {"kernel": np.ascontiguousarray(w.T)}

    tree: dict[str, Any] = {"embed_tokens": {"embedding": np.array(take("transformer.wte.weight"))}}
    for i in range(config.n_layers):
        block = f"transformer.blocks.{i}"
        qkv = take(f"{block}.att_proj.weight")
        attn = {"q_proj": kernel(qkv[:d]), "k_proj": kernel(qkv[d:d + kv]), "v_proj": kernel(qkv[d + kv:]),
                "o_proj": kernel(take(f"{block}.attn_out.weight"))}
        del qkv
        ff = take(f"{block}.ff_proj.weight")
        mlp = {"up_proj": kernel(ff[:hidden]), "gate_proj": kernel(ff[hidden:]),
               "down_proj": kernel(take(f"{block}.ff_out.weight"))}
        del ff
        tree[f"layers_{i}"] = {"self_attn": attn, "mlp": mlp}
    if not config.weight_tying:
        tree["lm_head"] = kernel(take("transformer.ff_out.weight"))
    return tree




# --- config.yaml ↔ our config ------------------------------------------------------------------------------------


def olmo_version_hint(olmo: Mapping[str, Any]) -> str | None:
    """Which loss normalisation the OLMo that wrote this config.yaml used, from the keys its dump has:
    `distributed_strategy` and `optimizer.record_update_metrics` first appear in ai2-olmo 0.4.0 ("tokens", B·T);
    a complete dump without them is ai2-olmo ≤ 0.3.0 or the 2024 code that trained OLMo-1B ("targets"). None: the
    file is not a complete dump (handwritten), so it cannot tell."""
    optimizer = olmo.get("optimizer") or {}
    if "distributed_strategy" in olmo or "record_update_metrics" in optimizer:
        return "tokens"
    if "fsdp" in olmo and "no_decay_norm_and_bias" in optimizer and "console_log_interval" in olmo:
        return "targets"
    return None


@dataclasses.dataclass(frozen=True)
class Mapped:
    """An OLMo config.yaml as our config keys (`overrides`, dotted names), with notes for the user."""

    overrides: dict[str, Any]
    notes: tuple[str, ...]


_REFUSED_MODEL = {  # OLMo model options olmo_jax does not implement, with the value OLMo-1 models use
    "activation_type": "swiglu", "block_type": "sequential", "alibi": False, "rope": True,
    "attention_layer_norm": False, "layer_norm_with_affine": False, "include_bias": False, "scale_logits": False,
    "norm_after": False, "embedding_layer_norm": False, "rope_full_precision": True, "layer_norm_type": "default",
}


def map_olmo_config(olmo: Mapping[str, Any], where: str) -> Mapped:
    """config.yaml → our config keys (model, optimizer, scheduler, batch sizes, seed, data, duration, precision,
    loss normalisation); OLMo options we cannot reproduce are refused, listed in one ConversionError."""
    m = olmo["model"]
    problems = [f"model.{k}={m[k]!r} (olmo_jax implements {v!r})" for k, v in _REFUSED_MODEL.items()
                if k in m and m[k] is not None and m[k] != v]
    for k in ("attention_dropout", "residual_dropout", "embedding_dropout"):
        if m.get(k):
            problems.append(f"model.{k}={m[k]} (olmo_jax has no dropout; OLMo-1B uses 0.0)")
    optimizer, scheduler, data = olmo.get("optimizer") or {}, olmo.get("scheduler") or {}, olmo.get("data") or {}
    if optimizer.get("name", "adamw") != "adamw":
        problems.append(f"optimizer.name={optimizer['name']!r} (olmo_jax implements 'adamw')")
    if scheduler.get("units", "steps") != "steps":
        problems.append(f"scheduler.units={scheduler['units']!r} (olmo_jax counts in 'steps')")
    if scheduler.get("name", "cosine_with_warmup") not in ("cosine_with_warmup", "linear_with_warmup", "constant"):
        problems.append(f"scheduler.name={scheduler['name']!r}")
    for key in ("max_grad_norm_ratio", "grad_clip_warmup_steps"):
        if olmo.get(key) is not None or scheduler.get(key) is not None:
            problems.append(f"{key} is set (olmo_jax clips to a fixed max_grad_norm)")
    if olmo.get("precision") not in (None, "amp_bf16", "fp32"):
        problems.append(f"precision={olmo['precision']!r} (olmo_jax runs 'amp_bf16' or 'fp32')")
    if data.get("datasets") or data.get("label_mask_paths") or data.get("instance_filter"):
        problems.append("data.datasets, data.label_mask_paths or data.instance_filter is set (olmo_jax reads plain "
                        "data.paths)")
    if data.get("drop_last") is False:
        problems.append("data.drop_last=false (OLMo-1B's loader drops the last partial batch, as olmo_jax does)")
    steps = _steps(olmo.get("max_duration"), olmo)
    if steps is None:
        problems.append(f"max_duration={olmo.get('max_duration')!r} (give it in steps, e.g. 739328)")
    if problems:
        raise ConversionError(f"{where} uses OLMo options olmo_jax does not reproduce:\n  - " + "\n  - ".join(problems))
    multi_query = bool(m.get("multi_query_attention"))
    model = {
        "d_model": m["d_model"], "n_heads": m["n_heads"],
        "n_kv_heads": 1 if multi_query else m.get("n_kv_heads"), "n_layers": m["n_layers"],
        "mlp_ratio": m.get("mlp_ratio", 4), "mlp_hidden_size": m.get("mlp_hidden_size"),
        "max_sequence_length": m["max_sequence_length"], "vocab_size": m["vocab_size"],
        "embedding_size": m.get("embedding_size"), "weight_tying": m.get("weight_tying", True),
        "rope_theta": float(m.get("rope_theta") or 10_000.0), "clip_qkv": m.get("clip_qkv"),
        "layer_norm_eps": float(m.get("layer_norm_eps") or 1e-5), "init_fn": m.get("init_fn", "normal"),
        "init_std": float(m.get("init_std", 0.02)), "init_cutoff_factor": m.get("init_cutoff_factor"),
        "emb_init_std": m.get("emb_init_std"), "eos_token_id": m["eos_token_id"],
        "pad_token_id": m["pad_token_id"],
    }
    decay_nb, decay_emb = optimizer.get("decay_norm_and_bias", False), optimizer.get("decay_embeddings", False)
    if optimizer.get("no_decay_norm_and_bias") is not None:  # deprecated; overrides both (scripts/train.py)
        decay_nb = decay_emb = not optimizer["no_decay_norm_and_bias"]
    overrides: dict[str, Any] = {f"model.{k}": v for k, v in model.items()}
    overrides |= {
        "optimizer.name": "adamw", "optimizer.learning_rate": float(optimizer.get("learning_rate", 1e-4)),
        "optimizer.weight_decay": float(optimizer.get("weight_decay", 0.01)),
        "optimizer.betas": tuple(float(b) for b in optimizer.get("betas", (0.9, 0.95))),
        "optimizer.eps": float(optimizer.get("eps", 1e-5)),  # the 2024 code hard-coded 1e-5 (no key)
        "optimizer.decay_norm_and_bias": bool(decay_nb), "optimizer.decay_embeddings": bool(decay_emb),
        "scheduler.name": scheduler.get("name", "cosine_with_warmup"),
        "scheduler.t_warmup": int(scheduler.get("t_warmup", 100)),
        "scheduler.alpha_f": float(scheduler.get("alpha_f", 0.1)),
        "scheduler.t_max": None if scheduler.get("t_max") is None else int(scheduler["t_max"]),
        "scheduler.warmup_min_lr": scheduler.get("warmup_min_lr"),
        "max_duration": steps, "stop_at": olmo.get("stop_at"),
        "global_train_batch_size": olmo["global_train_batch_size"],
        "device_train_microbatch_size": olmo.get("device_train_microbatch_size") or olmo["global_train_batch_size"],
        "max_grad_norm": olmo.get("max_grad_norm"),
        "softmax_auxiliary_loss": bool(olmo.get("softmax_auxiliary_loss", False)),
        "seed": olmo.get("seed", 6198), "data.seed": data.get("seed"),
        "data.paths": tuple(str(p) for p in data.get("paths") or ()),
        "data.memmap_dtype": data.get("memmap_dtype", "uint16"),
        "precision": olmo.get("precision") or "amp_bf16",
    }
    if olmo.get("run_name"):
        overrides["run_name"] = str(olmo["run_name"])
    notes = []
    hint = olmo_version_hint(olmo)
    overrides["loss_normalization"] = hint or "targets"
    if hint is None:
        notes.append(f"{where} does not say which OLMo wrote it, so the loss normalisation is a guess ('targets', "
                     "B·(T−1), as ai2-olmo ≤ 0.3.0 and OLMo-1B's own run); for a run of ai2-olmo ≥ 0.4.0 set "
                     "--config.loss_normalization=tokens.")
    if not overrides["data.paths"]:
        notes.append(f"{where} names no data.paths; give --config.data.paths.")
    return Mapped(overrides, tuple(notes))


def _steps(duration: Any, olmo: Mapping[str, Any]) -> int | None:
    """OLMo's max_duration in steps: an int, "N" or "Nsteps"; "NT" (tokens) over the batch's tokens; epochs: None."""
    if isinstance(duration, int | float):
        return int(duration)
    text = str(duration).strip().replace("_", "")
    if re.fullmatch(r"\d+(steps?)?", text):
        return int(re.match(r"\d+", text).group())
    tokens = re.fullmatch(r"(\d+(?:\.\d+)?(?:e\d+)?)T", text)
    if tokens:
        per_step = olmo["global_train_batch_size"] * olmo["model"]["max_sequence_length"]
        return int(float(tokens.group(1)) // per_step)
    return None


def model_config_of(olmo: Mapping[str, Any], where: str) -> ModelConfig:
    fields = {k.removeprefix("model."): v for k, v in map_olmo_config(olmo, where).overrides.items()
              if k.startswith("model.")}
    try:
        return ModelConfig(**fields)
    except (ConfigError, TypeError, ValueError) as e:  # a bad value, or a malformed field
        raise ConversionError(f"{where}: its model section describes no valid model ({e}).") from None


# --- the full state -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OlmoState:
    """What an OLMo unsharded checkpoint holds, in our layouts (NumPy trees shaped like our parameters)."""

    path: Path
    olmo_config: dict[str, Any]
    model: ModelConfig
    params: Any
    mu: Any | None  # Adam's exp_avg; None in a weights-only read (or a checkpoint without optim.pt)
    nu: Any | None  # exp_avg_sq
    step: int  # train.pt's global_step: the optimizer updates applied
    examples_seen: int  # instances of all epochs before this one, plus global_train_examples_seen_this_epoch
    epoch: int
    decayed: frozenset[str]  # OLMo names in a param group with weight_decay > 0
    last_lr: float | None  # the LR of the last update (param_groups' lr)


def read_olmo_checkpoint(path: str | Path, weights_only: bool = False,
                         batches_per_epoch: int | None = None) -> OlmoState:
    """Read an OLMo unsharded checkpoint directory. `examples_seen` counts across epochs when batches_per_epoch is
    given (the run's data decides it), else within the epoch."""
    path = Path(path)
    where = str(path)
    olmo = read_config_yaml(path)
    model = model_config_of(olmo, f"{path / CONFIG_FILE}")
    params = from_olmo_tensors(model, read_state_file(path, MODEL_FILES, "the weights"), f"{path}/model")
    train = read_state_file(path, TRAIN_FILES, "the trainer state") if not weights_only or _first(
        path, TRAIN_FILES) else {}
    if not isinstance(train, dict):
        raise ConversionError(f"{where}: its trainer state is a {type(train).__name__}, not OLMo's dict of step, epoch "
                              "and data position.")
    step = int(train.get("global_step", 0))
    epoch = int(train.get("epoch") or 0)
    gbs = int(olmo["global_train_batch_size"])
    seen = train.get("global_train_examples_seen_this_epoch", train.get("global_train_examples_seen"))
    if seen is None:
        seen = int(train.get("global_data_step", step)) * gbs
    seen = int(seen) + (epoch * batches_per_epoch * gbs if batches_per_epoch else 0)
    mu = nu = None
    decayed: frozenset[str] = frozenset()
    last_lr = None
    if not weights_only:
        optim = read_state_file(path, OPTIM_FILES, "the optimizer state")
        mu, nu, count, decayed, last_lr = _read_optim(model, optim, f"{where}/optim")
        if count != step:
            raise ConversionError(f"{where}: the optimizer has taken {count} steps but train.pt says global_step "
                                  f"{step}; the checkpoint is inconsistent.")
    return OlmoState(path, olmo, model, params, mu, nu, step, seen, epoch, decayed, last_lr)


def _read_optim(model: ModelConfig, optim: Any, where: str) -> tuple[Any, Any, int, frozenset[str], float | None]:
    """optim.pt (FSDP's full optimizer state, keyed by name, or plain torch's, keyed by index with OLMo's
    param_names) → (exp_avg tree, exp_avg_sq tree, step, names that decay, last LR)."""
    if not isinstance(optim, dict) or "state" not in optim or "param_groups" not in optim:
        raise ConversionError(f"{where} is not a torch optimizer state (no 'state' and 'param_groups').")
    groups = optim["param_groups"]
    index_to_name: dict[Any, str] = {}
    decayed = set()
    for group in groups:
        ids = list(group.get("params", []))
        names = list(group.get("param_names") or [i for i in ids if isinstance(i, str)])
        if len(names) != len(ids):
            raise ConversionError(f"{where}: param_groups list parameters by index without param_names, so the "
                                  "moments cannot be matched to weights.")
        for i, name in zip(ids, names, strict=True):
            index_to_name[i] = olmo_name(name)
            if float(group.get("weight_decay", 0.0)) > 0:
                decayed.add(olmo_name(name))
    exp_avg, exp_avg_sq, steps = {}, {}, set()
    state = optim["state"]
    for key in list(state):
        entry = state.pop(key)  # the file's dict lets go of each tensor as it is converted
        name = index_to_name.get(key, olmo_name(str(key)))
        if not {"exp_avg", "exp_avg_sq"} <= set(entry):
            raise ConversionError(f"{where}: the state of {name} has {sorted(entry)}, not AdamW's exp_avg and "
                                  "exp_avg_sq.")
        exp_avg[name], exp_avg_sq[name] = entry["exp_avg"], entry["exp_avg_sq"]
        steps.add(float(to_numpy(entry.get("step", 0))))
    if not exp_avg:  # before the first step torch has no state yet
        exp_avg = {k: np.zeros(s, np.float32) for k, s in olmo_shapes(model).items()}
        exp_avg_sq = {k: np.zeros(s, np.float32) for k, s in olmo_shapes(model).items()}
        steps = {0.0}
    if len(steps) != 1:
        raise ConversionError(f"{where}: parameters have taken different numbers of steps ({sorted(steps)}); "
                              "olmo_jax keeps one update count for all.")
    lrs = {float(g["lr"]) for g in groups if "lr" in g}
    return (from_olmo_tensors(model, exp_avg, f"{where} exp_avg"), from_olmo_tensors(model, exp_avg_sq,
            f"{where} exp_avg_sq"), int(steps.pop()), frozenset(decayed), lrs.pop() if len(lrs) == 1 else None)


def decayed_names(model: ModelConfig, decay_mask: Any) -> frozenset[str]:
    """The OLMo names our decay mask (a tree of bools shaped like the parameters) decays: a fused OLMo tensor
    decays when its parts do."""
    import jax

    marks = jax.tree.map(lambda b: np.full((1, 1), float(b), np.float32), decay_mask)  # 1×1 stand-ins: the names
    return frozenset(name for name, tensor in to_olmo_tensors(model, marks).items() if tensor.min() > 0)


def adamw_group_settings(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> dict[str, Any]:
    """The fields of a param group of this torch's AdamW (they vary by torch version), as its state_dict has them."""
    torch = torch_module()
    return dict(torch.optim.AdamW([torch.zeros(1)], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay).defaults)


def _rng_states(torch: Any, olmo_config: Mapping[str, Any]) -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states seeded from the run's seed, in train.pt's layout (OLMo restores them
    when the world size is unchanged; OLMo-1B draws nothing from them: it has no dropout). Only plain types and
    tensors, so the file loads with torch's weights_only under NumPy 1 and 2 alike."""
    import random

    seed = int(olmo_config.get("seed", 0))
    cuda = torch.from_numpy(np.array([seed, 0], np.int64).view(np.uint8).copy())  # a CUDA generator: seed, offset
    name, keys, pos, has_gauss, gauss = np.random.RandomState(seed).get_state()
    numpy_state = (name, [int(k) for k in keys], int(pos), int(has_gauss), float(gauss))  # no ndarray: no NumPy
    return {"python": random.Random(seed).getstate(), "numpy": numpy_state,  # globals, whichever NumPy reads it
            "torch": torch.Generator().manual_seed(seed).get_state(), "cuda": cuda}


def to_olmo_config(config: Mapping[str, Any], save_folder: str | None = None) -> dict[str, Any]:
    """Our run's config (TrainConfig.to_dict() layout) → an OLMo config.yaml (keys every ai2-olmo ≥ 0.4 TrainConfig
    has; OLMo fills the rest with its defaults). A run with loss_normalization 'tokens' is marked as ≥ 0.4.0
    (`distributed_strategy: fsdp`), one with 'targets' as ≤ 0.3.0, so an import of it chooses the same normalisation."""
    m, o, sch, data = config["model"], config["optimizer"], config["scheduler"], config["data"]
    model = {
        "d_model": m["d_model"], "n_heads": m["n_heads"], "n_kv_heads": m["n_kv_heads"], "clip_qkv": m["clip_qkv"],
        "n_layers": m["n_layers"], "mlp_ratio": m["mlp_ratio"], "mlp_hidden_size": m["mlp_hidden_size"],
        "activation_type": "swiglu", "block_type": "sequential", "alibi": False, "rope": True,
        "rope_full_precision": True, "flash_attention": False,
        "rope_theta": int(m["rope_theta"]) if float(m["rope_theta"]).is_integer() else m["rope_theta"],  # int in OLMo
        "attention_dropout": 0.0, "multi_query_attention": False, "attention_layer_norm": False,
        "residual_dropout": 0.0, "embedding_dropout": 0.0, "layer_norm_type": "default",
        "layer_norm_with_affine": False, "layer_norm_eps": m["layer_norm_eps"], "max_sequence_length":
        m["max_sequence_length"], "include_bias": False, "bias_for_layer_norm": False, "scale_logits": False,
        "vocab_size": m["vocab_size"], "embedding_size": m["embedding_size"], "weight_tying": m["weight_tying"],
        "eos_token_id": m["eos_token_id"], "pad_token_id": m["pad_token_id"], "init_device": "cpu",
        "init_fn": m["init_fn"], "init_std": m["init_std"], "init_cutoff_factor": m["init_cutoff_factor"],
        "emb_init_std": m["emb_init_std"], "precision": config["precision"],
    }
    tokens = config.get("loss_normalization") == "tokens"
    optimizer = {"name": "adamw", "learning_rate": o["learning_rate"], "weight_decay": o["weight_decay"],
                 "betas": list(o["betas"]), "eps": o["eps"], "no_decay_norm_and_bias": None,
                 "decay_norm_and_bias": o["decay_norm_and_bias"], "decay_embeddings": o["decay_embeddings"]}
    if tokens:
        optimizer["record_update_metrics"] = False
    olmo: dict[str, Any] = {
        "run_name": config["run_name"], "seed": config["seed"], "precision": config["precision"],
        "model": model, "optimizer": optimizer,
        "scheduler": {"name": sch["name"], "units": "steps", "t_warmup": sch["t_warmup"], "t_max": sch["t_max"],
                      "alpha_f": sch["alpha_f"], "warmup_min_lr": sch["warmup_min_lr"]},
        "data": {"paths": list(data["paths"]), "memmap_dtype": data["memmap_dtype"], "seed": data["seed"],
                 "drop_last": True, "num_workers": 0},
        "max_duration": config["max_duration"], "stop_at": config["stop_at"],
        "global_train_batch_size": config["global_train_batch_size"],
        "device_train_microbatch_size": config["device_train_microbatch_size"],
        "max_grad_norm": config["max_grad_norm"], "softmax_auxiliary_loss": config["softmax_auxiliary_loss"],
        "console_log_interval": config["console_log_interval"], "fsdp": {},
        "tokenizer": {"identifier": config["tokenizer"], "truncate_direction": "right"},
        "save_folder": save_folder or config["save_folder"],
    }
    if tokens:
        olmo["distributed_strategy"] = "fsdp"  # OLMo-1B's; with the fsdp section above
    return olmo


def write_olmo_checkpoint(folder: str | Path, olmo_config: Mapping[str, Any], model: ModelConfig,
                          weights: Callable[[], Any], moments: Callable[[], tuple[Any, Any, int]] | None, step: int,
                          epoch: int, examples_seen_this_epoch: int, decayed: frozenset[str],
                          group_settings: Mapping[str, Any], last_lr: float) -> Path:
    """Write `folder/step{step}-unsharded/` (model.pt, optim.pt, train.pt, config.yaml) as OLMo's trainer does:
    into `…-tmp`, renamed when complete; a failure removes the unfinished folder. An existing step directory is
    refused, never replaced. `weights()` and `moments()` load the trees when they are needed, one after the other,
    so the whole state is never in memory twice; `moments()` gives (exp_avg tree, exp_avg_sq tree, the updates they
    have taken: `step` unless updates were skipped), and None writes no optim.pt (weights only)."""
    torch = torch_module()
    folder = Path(folder)
    final = folder / f"step{step}-unsharded"
    tmp = folder / f"step{step}-unsharded-tmp"
    for taken in (final, tmp):
        if taken.exists():
            raise ConversionError(f"{taken} already exists; olmo_jax never replaces a checkpoint: give another "
                                  "output folder, or move it away.")
    tmp.mkdir(parents=True)
    try:
        _write_files(tmp, torch, olmo_config, model, weights, moments, step, epoch, examples_seen_this_epoch,
                     decayed, group_settings, last_lr)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(final)
    return final


def _write_files(tmp: Path, torch: Any, olmo_config: Mapping[str, Any], model: ModelConfig,
                 weights: Callable[[], Any], moments: Callable[[], tuple[Any, Any, int]] | None, step: int,
                 epoch: int, examples_seen_this_epoch: int, decayed: frozenset[str],
                 group_settings: Mapping[str, Any], last_lr: float) -> None:
    import yaml

    def tensors(tree: Any) -> dict[str, Any]:
        # torch wants writable arrays; a read-only view of a restored array is copied (one tensor at a time)
        return {k: torch.from_numpy(v if v.flags.writeable else v.copy())
                for k, v in to_olmo_tensors(model, tree).items()}

    model_tensors = tensors(weights())
    names = list(model_tensors)
    torch.save(model_tensors, tmp / "model.pt")
    del model_tensors
    if moments is not None:
        mu, nu, count = moments()
        avg = tensors(mu)
        del mu
        avg_sq = tensors(nu)
        del nu
        taken = torch.tensor(float(count))
        state = {name: {"step": taken.clone(), "exp_avg": avg.pop(name), "exp_avg_sq": avg_sq.pop(name)}
                 for name in names}
        groups = []
        for decays in (True, False):
            members = sorted(n for n in names if (n in decayed) == decays)
            if members:
                groups.append({**group_settings, "lr": last_lr,
                               "weight_decay": group_settings["weight_decay"] if decays else 0.0,
                               "params": members, "param_names": members})
        torch.save({"state": state, "param_groups": groups}, tmp / "optim.pt")
        del state
    gbs, seq = int(olmo_config["global_train_batch_size"]), int(model.max_sequence_length)
    trainer = {"epoch": epoch, "global_step": step, "global_train_examples_seen_this_epoch": examples_seen_this_epoch,
               "global_train_tokens_seen": step * gbs * seq, "world_size": 1, "checkpoints": [],
               "unsharded_checkpoints": [], "ephemeral_checkpoints": [], "rng": _rng_states(torch, olmo_config)}
    torch.save(trainer, tmp / "train.pt")
    (tmp / CONFIG_FILE).write_text(yaml.safe_dump(dict(olmo_config), sort_keys=False))
