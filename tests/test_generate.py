"""Generation: greedy parity with transformers' generate, KV-cache decoding against full re-forwards, sampling
filters against transformers' warpers, reproducible seeds, EOS, and the CLI on a checkpoint and an HF directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_python, tiny_config

from olmo_jax.data.tokenizer import Tokenizer
from olmo_jax.errors import UsageError
from olmo_jax.generate import LanguageModel, filter_logits, generate, next_token
from olmo_jax.model.config import ModelConfig
from olmo_jax.model.hf import save_hf
from olmo_jax.model.transformer import OLMo, init_params
from olmo_jax.train.checkpoint import save_params

# A large init std puts the logits of a random model far apart, so greedy choices are not near-ties that fp32
# rounding differences between JAX and torch could flip.
RANDOM_MODEL = dict(init_fn="normal", init_std=0.4)


def _prompts(lengths: list[int], vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(2, vocab, n).tolist() for n in lengths]


def _reforward_greedy(config: ModelConfig, params: dict, prompt: list[int], n: int) -> tuple[list[int], bool]:
    """Greedy decoding without a cache: re-run the whole growing sequence each step. Also says whether the argmax
    over the padded vocabulary would have picked a padding id at some step."""
    # Right-padded to one width (causal attention ignores what follows), so this compiles once.
    width = len(prompt) + n
    apply = jax.jit(lambda ids, last: OLMo(config).apply({"params": params}, ids)[0, last])
    ids, hit_padding = list(prompt), False
    for _ in range(n):
        logits = np.asarray(apply(jnp.array([ids + [0] * (width - len(ids))]), len(ids) - 1))
        hit_padding |= int(logits.argmax()) >= config.vocab_size
        ids.append(int(logits[: config.vocab_size].argmax()))
    return ids[len(prompt):], hit_padding


@pytest.mark.slow
def test_kv_cache_decoding_equals_full_reforward() -> None:
    # Half the embedding rows are padding (vocab 128 of 256), so an unmasked argmax would often emit them.
    config = tiny_config(n_kv_heads=2, clip_qkv=2.0, vocab_size=128, eos_token_id=127, **RANDOM_MODEL)
    params = init_params(config, jax.random.key(1))
    prompts = _prompts([3, 11, 1, 6], config.vocab_size, seed=1)
    ours = generate(config, params, prompts, max_new_tokens=10, stop_at_eos=False)
    hits = []
    for prompt, row in zip(prompts, ours, strict=True):
        expected, hit = _reforward_greedy(config, params, prompt, 10)
        assert row == expected
        hits.append(hit)
    assert any(hits), "the padded-vocabulary mask was not exercised"


def _hf_greedy(model, config: ModelConfig, prompts: list[list[int]], n: int, eos: int) -> list[list[int]]:
    """transformers' greedy generate on left-padded prompts; each row trimmed after its EOS."""
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), config.pad_token_id)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.tensor(prompt)
        mask[i, width - len(prompt):] = 1
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=config.pad_token_id,
            eos_token_id=eos, suppress_tokens=list(range(config.vocab_size, config.padded_vocab)),
        )
    rows = out[:, width:].tolist()
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "batches"),
    [
        (dict(), [[7], [3, 9], [5, 5, 12, 1]]),
        (dict(weight_tying=False, n_kv_heads=2, n_layers=3), [[4, 13, 2]]),
        (dict(clip_qkv=1.5, n_heads=8), [[1, 6], [10, 10]]),
    ],
)
def test_greedy_matches_transformers_generate(tmp_path: Path, overrides: dict, batches: list[list[int]]) -> None:
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = tiny_config(**RANDOM_MODEL, **overrides)
    params = init_params(config, jax.random.key(len(batches)))
    save_hf(config, params, tmp_path)
    model = transformers.OlmoForCausalLM.from_pretrained(tmp_path).eval()
    for seed, lengths in enumerate(batches):
        prompts = _prompts(lengths, config.vocab_size, seed)
        ours = generate(config, params, prompts, max_new_tokens=12, stop_at_eos=False)
        # EOS is a token that row 0 emits mid-way, so that transformers stops rows at different steps; stopping
        # inside our loop is test_eos_stops_only_its_row's subject.
        eos = ours[0][5]
        assert [row[: row.index(eos) + 1] if eos in row else row for row in ours] == _hf_greedy(
            model, config, prompts, 12, eos)


def test_filters_match_transformers_warpers() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(0).normal(size=(6, 40)).astype(np.float32) * 3
    for top_k, top_p in [(5, None), (None, 0.9), (None, 0.3), (None, 1e-4), (8, 0.6)]:
        theirs = torch.tensor(logits)
        if top_k is not None:
            theirs = TopKLogitsWarper(top_k)(None, theirs)
        if top_p is not None:
            theirs = TopPLogitsWarper(top_p)(None, theirs)
        ours = np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p))
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs.numpy()), err_msg=f"{top_k=} {top_p=}")
        kept = ~np.isinf(ours)
        np.testing.assert_array_equal(ours[kept], logits[kept])


def test_top_p_on_hand_made_distribution() -> None:
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))

    def kept(**kw: float) -> list[int]:
        return np.flatnonzero(~np.isinf(np.asarray(filter_logits(logits, **kw)[0]))).tolist()

    assert kept(top_p=0.79) == [1, 3]  # 0.5 + 0.3 reaches 0.79
    assert kept(top_p=0.81) == [1, 2, 3]
    assert kept(top_p=0.01) == [1]  # the most likely token always survives
    assert kept(top_k=3, top_p=0.9) == [1, 2, 3]  # renormalised over the top 3: 0.5/0.95 + 0.3/0.95 < 0.9


def test_samples_respect_temperature_top_k_and_top_p() -> None:
    probs = np.array([0.02, 0.4, 0.08, 0.25, 0.15, 0.1])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
    keys = jax.random.split(jax.random.key(0), 4000)

    def samples(temperature: float, top_k: int | None, top_p: float | None) -> np.ndarray:
        draw = jax.vmap(lambda k: next_token(logits, k, temperature, top_k, top_p, greedy=False)[0])
        return np.bincount(np.asarray(draw(keys)), minlength=len(probs)) / len(keys)

    freq = samples(1.0, 3, None)
    assert set(np.flatnonzero(freq)) == {1, 3, 4}  # the three most likely
    np.testing.assert_allclose(freq[[1, 3, 4]], probs[[1, 3, 4]] / 0.8, atol=0.03)
    freq = samples(1.0, None, 0.7)
    assert set(np.flatnonzero(freq)) == {1, 3, 4}  # 0.4 + 0.25 < 0.7 ≤ 0.4 + 0.25 + 0.15
    sharp = probs**2 / (probs**2).sum()
    np.testing.assert_allclose(samples(0.5, None, None), sharp, atol=0.03)


@pytest.mark.slow
def test_sampling_is_reproducible_and_top_k_1_is_greedy() -> None:
    config = tiny_config(init_fn="normal", init_std=0.1)  # a flatter distribution: samples differ from greedy
    params = init_params(config, jax.random.key(2))
    prompts = _prompts([4, 9], config.vocab_size, seed=2)

    def sample(seed: int, **kw: float) -> list[list[int]]:
        return generate(config, params, prompts, 16, temperature=1.0, seed=seed, **kw)

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    greedy = generate(config, params, prompts, 16)
    assert sample(3, top_k=1) == greedy
    assert sample(3) != greedy


def test_eos_stops_only_its_row() -> None:
    config = tiny_config(**RANDOM_MODEL)
    params = init_params(config, jax.random.key(3))
    prompts = _prompts([5, 5], config.vocab_size, seed=3)
    free = generate(config, params, prompts, max_new_tokens=10, stop_at_eos=False)
    eos = free[0][2]
    assert eos not in free[1], "pick another seed: the other row must not emit this EOS"
    stopped = generate(dataclasses.replace(config, eos_token_id=eos), params, prompts, max_new_tokens=10)
    assert stopped == [free[0][: free[0].index(eos) + 1], free[1]]


def test_bad_requests_are_refused() -> None:
    config = tiny_config()
    params = init_params(config, jax.random.key(0))
    for kwargs, message in [
        (dict(prompts=[[]]), "prompt 0 is empty"),
        (dict(prompts=[[3], [250]]), "token id 250"),
        (dict(prompts=[[3] * 60], max_new_tokens=10), "context of 64"),
        (dict(temperature=-1.0), "temperature=-1.0"),
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(top_p=1.5, temperature=1.0), "top_p=1.5"),
        (dict(top_k=0, temperature=1.0), "top_k=0"),
    ]:
        request = dict(prompts=[[3, 4]], max_new_tokens=4) | kwargs
        with pytest.raises(UsageError, match=message):
            generate(config, params, **request)


@pytest.fixture(scope="module")
def text_model(tokenizer_json: Path) -> tuple[ModelConfig, dict]:
    """A tiny random model over the test tokenizer's vocabulary (id 0 is its <|endoftext|>)."""
    vocab = Tokenizer.load(tokenizer_json, eos_token_id=0).vocab_size
    config = tiny_config(vocab_size=vocab, embedding_size=-(-vocab // 16) * 16, eos_token_id=0, **RANDOM_MODEL)
    return config, init_params(config, jax.random.key(4))


def _expected_text(config: ModelConfig, params: dict, tokenizer: Path, prompts: list[str], n: int) -> str:
    tok = Tokenizer.load(tokenizer, config.eos_token_id, config.pad_token_id)
    new = generate(config, params, tok.encode_batch(prompts, add_special_tokens=False), n)
    return "\n\n".join(p + tok.decode(ids) for p, ids in zip(prompts, new, strict=True))


@pytest.mark.slow
def test_cli_from_checkpoint_and_hf_directory(tmp_path: Path, tokenizer_json: Path, text_model: tuple) -> None:
    config, params = text_model
    prompts = ["Language modeling is", "OLMo"]
    expected = _expected_text(config, params, tokenizer_json, prompts, 8)
    save_params(tmp_path / "run", config, params, step=3)
    args = ["--prompt", prompts[0], "--prompt", prompts[1], "--max_new_tokens", "8"]
    result = run_python("-m", "olmo_jax.generate", "--checkpoint", str(tmp_path / "run"),
                        "--tokenizer", str(tokenizer_json), *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    save_hf(config, params, tmp_path / "hf", tokenizer=tokenizer_json)
    result = run_python("-m", "olmo_jax.generate", "--hf", str(tmp_path / "hf"), *args)  # its own tokenizer.json
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"


@pytest.mark.slow
def test_language_model_api(tmp_path: Path, tokenizer_json: Path, text_model: tuple) -> None:
    config, params = text_model
    save_hf(config, params, tmp_path, tokenizer=tokenizer_json)
    lm = LanguageModel.from_hf(tmp_path)
    ids = lm.tokenizer.encode("Language modeling is", add_special_tokens=False)
    new = lm.generate(ids, max_new_tokens=8)
    assert new == generate(config, params, [ids], 8)[0]
    assert lm.generate([ids], max_new_tokens=8) == [new]
    assert lm.complete("Language modeling is", max_new_tokens=8) == lm.tokenizer.decode(new)
    sampled = lm.complete(["OLMo", "Language"], max_new_tokens=8, temperature=0.8, top_p=0.9, seed=1)
    assert sampled == lm.complete(["OLMo", "Language"], max_new_tokens=8, temperature=0.8, top_p=0.9, seed=1)
    bf16 = LanguageModel.from_hf(tmp_path, dtype="bfloat16")
    assert jax.tree.leaves(bf16.params)[0].dtype == jnp.bfloat16
    assert all(0 <= t < config.vocab_size for t in bf16.generate(ids, max_new_tokens=8))


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = run_python("-m", "olmo_jax.generate", "--checkpoint", str(tmp_path / "missing"), "--prompt", "x")
    assert result.returncode == 1 and result.stderr.startswith("error:") and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_python("-m", "olmo_jax.generate", "--hf", str(tmp_path), "--prompt", "x")
    assert result.returncode == 1 and result.stderr.startswith("error:") and "no config.json" in result.stderr
    assert "Traceback" not in result.stderr
    # Sampling settings are checked before any model is loaded.
    result = run_python("-m", "olmo_jax.generate", "--hf", str(tmp_path), "--prompt", "x", "--top_p", "1.5")
    assert result.returncode == 1 and result.stderr.startswith("error:") and "top_p=1.5" in result.stderr
