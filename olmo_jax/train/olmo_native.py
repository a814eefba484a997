"""OLMo-native unsharded checkpoints (`stepN-unsharded/`) ↔ olmo_jax's full train state (docs/olmo-exchange.md).

OLMo's trainer writes `model.pt` (weights), `optim.pt` (torch AdamW state), `train.pt` (step, epoch, data position,
RNG states) and `config.yaml` (its TrainConfig) per checkpoint (docs/olmo_facts.md §6). This module reads such a
directory into our parameters, Adam moments and step, and writes our state back in the same layout, so a run
continues across the two frameworks with the same batches and updates.

- Tensors: OLMo's `att_proj` is our q, k and v stacked along rows; `ff_proj` is up (first half) and gate (second
  half); torch Linear weights are [out, in], our kernels [in, out]. Adam's `exp_avg`/`exp_avg_sq` have the weights'
  shapes and map the same way; OLMo's per-parameter `step` is our update count.
- The files are read safely by olmo_jax/train/olmo_files.py; config.yaml maps onto our keys in
  olmo_jax/train/olmo_config.py.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from olmo_jax.errors import ConversionError
from olmo_jax.model.config import ModelConfig
from olmo_jax.train.olmo_config import model_config_of
from olmo_jax.train.olmo_files import (
    CONFIG_FILE,
    MODEL_FILES,
    OPTIM_FILES,
    TRAIN_FILES,
    first_file,
    read_config_yaml,
    read_state_file,
    to_numpy,
    torch_module,
)

# Wrapper prefixes FSDP, DDP and activation checkpointing put in front of parameter names.
_WRAPPERS = re.compile(r"(^|\.)(_fsdp_wrapped_module|module|_checkpoint_wrapped_module|_orig_mod)\.")


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
    train = read_state_file(path, TRAIN_FILES, "the trainer state") if not weights_only or first_file(
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
