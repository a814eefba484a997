"""tools/convert_from_hf.py and tools/convert_to_hf.py round-trip through an olmo_jax checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_python, tiny_config

from olmo_jax.model.hf import load_hf, save_hf
from olmo_jax.model.transformer import init_params
from olmo_jax.train.checkpoint import load_params

pytestmark = pytest.mark.slow


def test_hf_to_checkpoint_to_hf_round_trip(tmp_path: Path, tokenizer_json: Path) -> None:
    config = tiny_config(weight_tying=False, clip_qkv=3.0, vocab_size=300, embedding_size=320, eos_token_id=0)
    params = init_params(config, jax.random.key(0))
    save_hf(config, params, tmp_path / "hf")
    result = run_python("tools/convert_from_hf.py", "--hf", str(tmp_path / "hf"), "--output", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    loaded_config, loaded, meta = load_params(tmp_path / "run")
    assert loaded_config.clip_qkv == 3.0 and meta["source"].startswith("hf:")
    jax.tree.map(np.testing.assert_array_equal, params, jax.tree.map(np.asarray, loaded))
    result = run_python("tools/convert_to_hf.py", "--checkpoint", str(tmp_path / "run"),
                        "--output", str(tmp_path / "hf2"), "--tokenizer", str(tokenizer_json))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hf2/tokenizer.json").exists()
    _, again = load_hf(tmp_path / "hf2")
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), again)


def test_convert_errors_are_one_line(tmp_path: Path) -> None:
    result = run_python("tools/convert_from_hf.py", "--hf", str(tmp_path), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "no config.json" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_python("tools/convert_to_hf.py", "--checkpoint", str(tmp_path / "nothing"),
                        "--output", str(tmp_path / "o"))
    assert result.returncode == 1 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_a_checkpoint_trained_with_cudnn_attention_converts_on_a_cpu(tmp_path: Path, tokenizer_json: Path) -> None:
    """olmo_jax 0.1 saved how a run ran (attention_impl='cudnn', bf16) as part of the model and restored it, so its
    checkpoints from a GPU could not be converted on a CPU; conversion never runs the model and ignores it now."""
    from olmo_jax.train.checkpoint import Checkpointer

    config = tiny_config(vocab_size=300, embedding_size=320, eos_token_id=0)
    params = init_params(config, jax.random.key(1))
    record = dataclasses.asdict(config) | {"compute_dtype": "bfloat16", "attention_impl": "cudnn", "remat": "full"}
    writer = Checkpointer(tmp_path / "gpu_run" / "checkpoints", async_save=False)
    writer.save(5, params, {"step": 5, "model": record})
    writer.wait()
    writer.close()
    result = run_python("tools/convert_to_hf.py", "--checkpoint", str(tmp_path / "gpu_run"), "--output",
                        str(tmp_path / "hf"), "--tokenizer", str(tokenizer_json), env={"JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr
    loaded_config, loaded = load_hf(tmp_path / "hf")
    assert loaded_config.d_model == config.d_model
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), loaded)
