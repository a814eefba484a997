"""OLMo's config.yaml ↔ our config keys: what configs/olmo_yaml.py and `load_path` read from an OLMo checkpoint,
and what an export writes (docs/olmo-exchange.md).

The loss normalisation differs by OLMo version (`loss_normalization`): ai2-olmo ≤ 0.3.0 divides by B·(T−1)
targets, ≥ 0.4.0 by B·T tokens; `olmo_version_hint` tells them apart by the keys their config.yaml dumps have.
OLMo options olmo_jax cannot reproduce are refused, all named in one error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from olmo_jax.errors import ConfigError, ConversionError
from olmo_jax.model.config import ModelConfig


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

    def nested(self) -> dict[str, Any]:
        """The overrides as a nested dict in the config files' layout (`{"optimizer": {"eps": ...}, ...}`)."""
        out: dict[str, Any] = {}
        for key, value in self.overrides.items():
            *parents, leaf = key.split(".")
            node = out
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = value
        return out


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
