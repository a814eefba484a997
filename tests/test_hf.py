"""HF conversion both ways: logits parity with transformers' OlmoForCausalLM, clean loading, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_config

from olmo_jax.errors import ConversionError
from olmo_jax.model.hf import load_hf, save_hf, to_hf_config
from olmo_jax.model.transformer import OLMo, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CASES = [  # (tied, clip_qkv, n_heads, n_kv_heads, sequence length): lengths deliberately not powers of two
    (True, None, 4, None, 13),
    (False, None, 2, None, 30),
    (True, 0.5, 8, None, 7),
    (False, 0.4, 8, 2, 19),
]


def _hf_logits(path: Path, ids: np.ndarray) -> np.ndarray:
    model, info = transformers.OlmoForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        return model.eval()(torch.tensor(ids)).logits.numpy()


@pytest.mark.slow
@pytest.mark.parametrize(("tied", "clip", "heads", "kv_heads", "length"), CASES)
def test_ours_to_hf_logits_match(tmp_path: Path, tied: bool, clip: float | None, heads: int, kv_heads: int | None,
                                 length: int) -> None:
    config = tiny_config(weight_tying=tied, clip_qkv=clip, n_heads=heads, n_kv_heads=kv_heads, n_layers=3,
                         init_fn="normal", init_std=0.1)
    params = init_params(config, jax.random.key(length))
    save_hf(config, params, tmp_path)
    ids = np.random.default_rng(length).integers(0, config.vocab_size, (3, length))
    ours = np.asarray(OLMo(config).apply({"params": params}, ids))
    theirs = _hf_logits(tmp_path, ids)
    assert ours.shape == theirs.shape == (3, length, 256)
    assert np.abs(ours - theirs).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(("tied", "clip", "heads", "kv_heads", "length"), CASES)
def test_hf_to_ours_logits_match(tmp_path: Path, tied: bool, clip: float | None, heads: int, kv_heads: int | None,
                                 length: int) -> None:
    torch.manual_seed(length)
    hf_config = transformers.OlmoConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=heads,
        num_key_value_heads=kv_heads, max_position_embeddings=64, tie_word_embeddings=tied, clip_qkv=clip,
        pad_token_id=1, eos_token_id=249, initializer_range=0.1,
    )
    transformers.OlmoForCausalLM(hf_config).save_pretrained(tmp_path)  # safetensors
    config, params = load_hf(tmp_path)
    assert config.mlp_inner == 96 and config.weight_tying == tied and config.clip_qkv == clip
    ids = np.random.default_rng(length).integers(0, 250, (2, length))
    ours = np.asarray(OLMo(config).apply({"params": params}, ids))
    assert np.abs(ours - _hf_logits(tmp_path, ids)).max() <= 1e-5


def test_round_trip_is_lossless(tmp_path: Path) -> None:
    config = tiny_config(weight_tying=False, clip_qkv=2.0)
    params = init_params(config, jax.random.key(0))
    save_hf(config, params, tmp_path)
    loaded_config, loaded = load_hf(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), loaded)
    assert loaded_config.d_model == config.d_model and loaded_config.clip_qkv == 2.0


def test_config_json_fields() -> None:
    hf = to_hf_config(tiny_config(d_model=2048, n_heads=16, n_layers=16, mlp_ratio=8, vocab_size=50280,
                                  embedding_size=50304, eos_token_id=50279, max_sequence_length=2048))
    expected = {  # docs/olmo_facts.md §7.2
        "model_type": "olmo", "architectures": ["OlmoForCausalLM"], "vocab_size": 50304, "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
        "hidden_act": "silu", "max_position_embeddings": 2048, "pad_token_id": 1, "eos_token_id": 50279,
        "tie_word_embeddings": True, "rope_theta": 10000.0, "clip_qkv": None, "attention_bias": False,
    }
    assert {k: hf[k] for k in expected} == expected
    loaded = transformers.OlmoConfig(**hf)  # current transformers reads the rope theta
    assert loaded.rope_parameters["rope_theta"] == 10000.0


def test_sharded_safetensors_are_written_and_read(tmp_path: Path) -> None:
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    save_hf(config, params, tmp_path, max_shard_bytes=50_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _, loaded = load_hf(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), loaded)
    ids = np.arange(10)[None] % 250
    np.testing.assert_allclose(_hf_logits(tmp_path, ids), OLMo(config).apply({"params": params}, ids), atol=1e-5)


def test_tokenizer_files_are_exported_and_load_in_transformers(tmp_path: Path, tokenizer_json: Path) -> None:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_json)).get_vocab_size()
    config = tiny_config(vocab_size=vocab, embedding_size=320, eos_token_id=0)
    save_hf(config, init_params(config, jax.random.key(0)), tmp_path, tokenizer=tokenizer_json)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|padding|>" and tok.bos_token is None
    ids = tok("OLMo is open")["input_ids"]
    assert ids == Tokenizer.from_file(str(tokenizer_json)).encode("OLMo is open").ids  # no BOS, no EOS added
    assert load_hf(tmp_path)[0].vocab_size == vocab  # tokenizer.json sets the unpadded vocabulary


def _saved(tmp_path: Path) -> Path:
    config = tiny_config()
    save_hf(config, init_params(config, jax.random.key(0)), tmp_path)
    return tmp_path


def test_missing_tensor_is_a_clear_error(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = _saved(tmp_path)
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf(path)


def test_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = _saved(tmp_path)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.weight"] = np.zeros((64, 32), np.float32)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=r"q_proj\.weight' has shape \(64, 32\) but config\.json implies"):
        load_hf(path)


def test_unexpected_tensor_is_a_clear_error(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = _saved(tmp_path)
    tensors = load_file(path / "model.safetensors") | {"model.layers.0.self_attn.q_norm.weight": np.ones(64)}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="not part of an OLMo-1 model"):
        load_hf(path)


@pytest.mark.parametrize(("model_type", "message"), [("olmo2", "OLMo-2"), ("llama", "'llama'"),
                                                     ("hf_olmo", "legacy trust_remote_code")])
def test_unknown_model_type_is_a_clear_error(tmp_path: Path, model_type: str, message: str) -> None:
    path = _saved(tmp_path)
    config = json.loads((path / "config.json").read_text()) | {"model_type": model_type}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match=message):
        load_hf(path)


def test_pickle_only_directory_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"this would be a pickle; it must never be opened")
    with pytest.raises(ConversionError, match=r"only pickled weights \(pytorch_model\.bin\).*never unpickles"):
        load_hf(path)


def test_directory_without_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"no config\.json"):
        load_hf(tmp_path)


def test_an_output_directory_holding_model_files_is_refused(tmp_path: Path) -> None:
    """save_hf used to delete the model*.safetensors it found and write over config.json."""
    config = tiny_config()
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"someone's shard")
    with pytest.raises(ConversionError, match=r"already holds model-00001-of-00002\.safetensors; olmo_jax never "
                                              r"replaces a file"):
        save_hf(config, init_params(config, jax.random.key(0)), tmp_path)
    assert (tmp_path / "model-00001-of-00002.safetensors").read_bytes() == b"someone's shard"
    assert not (tmp_path / "config.json").exists()
