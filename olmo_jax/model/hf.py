"""Hugging Face `OlmoForCausalLM` ↔ olmo_jax: a name table plus transposes, and config.json both ways.

Our parameter names are HF's module names (olmo_jax/model/transformer.py), so the only work is renaming, transposing
torch `Linear` weights ([out, in]) to Flax kernels ([in, out]), and translating config fields (docs/olmo_facts.md §7).
Only safetensors are read or written; pickled `pytorch_model.bin` files are refused, never unpickled.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from olmo_jax.errors import ConfigError, ConversionError
from olmo_jax.model.config import ModelConfig
from olmo_jax.model.transformer import param_shapes

Params = dict[str, Any]

# HF tensor name → (our parameter path, whether the tensor is a transposed torch Linear weight).
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
    "lm_head.weight": (("lm_head", "kernel"), True),
}
_LAYER_NAMES = {
    f"model.layers.{{i}}.{module}.{proj}.weight": (("layers_{i}", module, proj, "kernel"), True)
    for module, projs in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                          ("mlp", ("gate_proj", "up_proj", "down_proj")))
    for proj in projs
}
# Buffers some exporters store that carry no weights (HF recomputes them).
_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size
# What save_hf writes (besides model*.safetensors), none of which it may find already there.
_WRITTEN = {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"}


def name_table(config: ModelConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Every HF tensor name this config has → (our parameter path, transposed)."""
    table = {k: v for k, v in _GLOBAL_NAMES.items() if k != "lm_head.weight" or not config.weight_tying}
    for i in range(config.n_layers):
        for hf_name, (path, transposed) in _LAYER_NAMES.items():
            table[hf_name.format(i=i)] = (tuple(p.format(i=i) for p in path), transposed)
    return table


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json fields of transformers' OLMo converter (§7.2)."""
    return {
        "architectures": ["OlmoForCausalLM"],
        "model_type": "olmo",
        "vocab_size": config.padded_vocab,  # HF's vocab is the padded embedding, not the tokenizer's 50,280
        "hidden_size": config.d_model,
        "intermediate_size": config.mlp_inner,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_sequence_length,
        "initializer_range": config.init_std,
        "use_cache": True,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": config.eos_token_id,
        "tie_word_embeddings": config.weight_tying,  # OlmoConfig defaults to False: always write it
        # transformers 4.x reads rope_theta at the top level; 5.x reads rope_parameters (and moves rope_theta there).
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "clip_qkv": config.clip_qkv,
        "torch_dtype": "float32",
    }


def from_hf_config(hf: dict[str, Any], vocab_size: int | None = None) -> ModelConfig:
    """An HF OLMo config.json dict → ModelConfig. `vocab_size` is the tokenizer's size when known.

    HF records neither the LayerNorm epsilon (its OLMo hard-codes 1e-5) nor how the weights were initialised; those
    fields get OLMo-1B's values (`mitchell`, OLMo's default cutoff), which matter only to a run that re-initialises.
    """
    model_type = hf.get("model_type")
    if model_type == "hf_olmo":
        raise ConversionError(
            "config.json has model_type 'hf_olmo' (the legacy trust_remote_code format). Convert it to "
            "transformers' native format first (model_type 'olmo', e.g. the allenai/OLMo-1B-hf releases)."
        )
    if model_type != "olmo":
        raise ConversionError(
            f"config.json has model_type {model_type!r}; olmo_jax reads the OLMo-1 family, model_type 'olmo' "
            "(OlmoForCausalLM). OLMo-2 ('olmo2') and OLMoE differ in architecture and are not supported."
        )
    if hf.get("attention_bias"):
        raise ConversionError("config.json sets attention_bias=true; OLMo-1 models have no biases.")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"config.json has hidden_act={hf['hidden_act']!r}; only 'silu' (SwiGLU) exists.")
    rope = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ConversionError("config.json sets RoPE scaling; OLMo-1 uses plain RoPE and scaling is unsupported.")
    eos = hf.get("eos_token_id", 50279)
    eos = eos[0] if isinstance(eos, list) else eos
    d, inner = hf["hidden_size"], hf["intermediate_size"]
    padded = hf["vocab_size"]
    fields: dict[str, Any] = {
        "d_model": d,
        "n_heads": hf["num_attention_heads"],
        "n_kv_heads": hf.get("num_key_value_heads"),
        "n_layers": hf["num_hidden_layers"],
        # OLMo's mlp_ratio times d_model is the ff_proj (value + gate) width, twice HF's intermediate_size.
        "mlp_ratio": 2 * inner // d if (2 * inner) % d == 0 else 1,
        "mlp_hidden_size": None if (2 * inner) % d == 0 else 2 * inner,
        "max_sequence_length": hf.get("max_position_embeddings", 2048),
        "vocab_size": vocab_size if vocab_size is not None and vocab_size <= padded else padded,
        "embedding_size": padded,
        "weight_tying": bool(hf.get("tie_word_embeddings", False)),
        "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
        "clip_qkv": hf.get("clip_qkv"),
        "layer_norm_eps": 1e-5,
        "init_fn": "mitchell",
        "init_std": hf.get("initializer_range", 0.02),
        "init_cutoff_factor": None,
        "emb_init_std": None,
        "eos_token_id": eos if eos is not None else 50279,
        "pad_token_id": hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 1,
    }
    if fields["n_kv_heads"] == fields["n_heads"]:
        fields["n_kv_heads"] = None
    try:
        return ModelConfig(**fields)
    except ConfigError as e:
        raise ConversionError(f"config.json describes an invalid model: {e}") from None


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [path / f for f in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ConversionError(f"{index} names shard files that do not exist: {missing}")
        return files
    if (path / "model.safetensors").exists():
        return [path / "model.safetensors"]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickles:
        raise ConversionError(
            f"{path} holds only pickled weights ({', '.join(pickles)}); olmo_jax never unpickles files, since "
            "loading a pickle runs arbitrary code. Re-save them as safetensors with transformers: "
            "OlmoForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)."
        )
    raise ConversionError(f"{path} has no model.safetensors, no safetensors index and no *.safetensors files.")


def _tensors(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    for file in files:
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


def _tokenizer_vocab_size(path: Path) -> int | None:
    if not (path / "tokenizer.json").exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()


def load_hf(path: str | Path) -> tuple[ModelConfig, Params]:
    """Read an HF OLMo directory (config.json + safetensors, sharded or not) → (config, fp32 numpy params).

    `vocab_size` (the tokenizer's size, below HF's padded vocab_size) comes from tokenizer.json when present.
    """
    path = Path(path)
    if not (path / "config.json").exists():
        raise ConversionError(f"{path} is not a Hugging Face model directory: it has no config.json.")
    config = from_hf_config(json.loads((path / "config.json").read_text()), _tokenizer_vocab_size(path))
    table = name_table(config)
    shapes = param_shapes(config)  # the model's own parameter tree, as ShapeDtypeStructs
    params: Params = {}
    unexpected = []
    for name, tensor in _tensors(_safetensors_files(path)):
        if _IGNORED.fullmatch(name) or (name == "lm_head.weight" and config.weight_tying):
            continue  # a tied lm_head stored anyway is the embedding again
        if name not in table:
            unexpected.append(name)
            continue
        target, transposed = table.pop(name)
        array = np.asarray(tensor, dtype=np.float32)
        node_shape: Any = shapes
        for key in target:
            node_shape = node_shape[key]
        params_shape = tuple(node_shape.shape)
        if (array.T if transposed else array).shape != params_shape:
            hf_shape = params_shape[::-1] if transposed else params_shape
            raise ConversionError(
                f"{path}: tensor {name!r} has shape {tuple(array.shape)} but config.json implies {hf_shape}."
            )
        node = params
        for key in target[:-1]:
            node = node.setdefault(key, {})
        node[target[-1]] = np.ascontiguousarray(array.T) if transposed else array
    if unexpected:
        raise ConversionError(
            f"{path}: {len(unexpected)} tensors are not part of an OLMo-1 model with this config.json, "
            f"e.g. {sorted(unexpected)[:5]}."
        )
    if table:
        raise ConversionError(
            f"{path}: {len(table)} tensors that config.json requires are missing, e.g. {sorted(table)[:5]}."
        )
    return config, params


def save_hf(
    config: ModelConfig, params: Params, path: str | Path, tokenizer: str | Path | None = None,
    max_shard_bytes: int = _SHARD_BYTES,
) -> None:
    """Write an HF OLMo directory: config.json, fp32 safetensors (sharded above `max_shard_bytes`) and, given a
    tokenizer.json path, the tokenizer files. `params` may be numpy or (sharded) jax arrays. A directory that already
    holds a model or tokenizer file is refused: olmo_jax never replaces a file."""
    path = Path(path)
    taken = sorted(p.name for p in path.glob("*")
                   if p.name in _WRITTEN or re.fullmatch(r"model.*\.safetensors", p.name))
    if taken:
        raise ConversionError(f"{path} already holds {', '.join(taken)}; olmo_jax never replaces a file: give an empty "
                              "or new output directory.")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for hf_name, (target, transposed) in name_table(config).items():
        node: Any = params
        for key in target:
            node = node[key]
        array = np.asarray(node, dtype=np.float32)
        tensors[hf_name] = np.ascontiguousarray(array.T if transposed else array)
    _write_safetensors(tensors, path, max_shard_bytes)
    (path / "config.json").write_text(json.dumps(to_hf_config(config), indent=2) + "\n")
    (path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}, indent=2) + "\n")
    if tokenizer is not None:
        write_hf_tokenizer(config, tokenizer, path)


def _write_safetensors(tensors: dict[str, np.ndarray], path: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if len(shards) == 1:
        save_file(shards[0], path / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(shard, name)
    total = sum(a.nbytes for a in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_hf_tokenizer(config: ModelConfig, tokenizer_json: str | Path, path: Path) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json as OLMo's converter writes them (§7.3):
    a GPT-NeoX fast tokenizer, no BOS, no automatic EOS, eos/pad named by the ids in `config`."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    if tok.get_vocab_size() > config.padded_vocab:
        raise ConversionError(
            f"{tokenizer_json} has {tok.get_vocab_size()} tokens but the model's embedding only "
            f"{config.padded_vocab} rows; it is not this model's tokenizer (pass another, or --no-tokenizer)."
        )
    eos, pad = tok.id_to_token(config.eos_token_id), tok.id_to_token(config.pad_token_id)
    if eos is None or pad is None:
        raise ConversionError(
            f"{tokenizer_json} has no token for eos_token_id={config.eos_token_id} or "
            f"pad_token_id={config.pad_token_id}; is it the tokenizer this model was trained with?"
        )
    shutil.copyfile(tokenizer_json, path / "tokenizer.json")
    special = {"eos_token": eos, "pad_token": pad}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    tokenizer_config = {
        "tokenizer_class": "GPTNeoXTokenizer",
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": None,
        "unk_token": None,
        "model_max_length": config.max_sequence_length,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
