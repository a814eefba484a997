"""Evaluation: request construction, OLMo's metrics on hand-made scores, continuation log-likelihoods against
transformers' OlmoForCausalLM, perplexity, and the in-loop `Evaluators` interface."""

from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_python, tiny_config

from olmo_jax.data.tokenizer import Tokenizer, tokenizer_path
from olmo_jax.errors import ConfigError, DataError, TaskDataError
from olmo_jax.eval.config import EvaluatorConfig
from olmo_jax.eval.evaluators import (
    Evaluators,
    Requests,
    Scorer,
    build_requests,
    f1_score,
    instance_losses,
    length_bucket,
    positions_bucket,
    score,
)
from olmo_jax.eval.tasks import TASKS, Doc
from olmo_jax.model.transformer import OLMo, init_params


class CharTokenizer:
    """One token per character (its code point), so expected token lists can be written by hand."""

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        assert not add_special_tokens
        return [[ord(c) for c in t] for t in texts]


def chars(ids: np.ndarray) -> str:
    return "".join(chr(i) for i in ids)


def olmo_sized(**overrides: object):
    """A tiny model with OLMo's real vocabulary, so real tokenized prompts fit."""
    return tiny_config(vocab_size=50280, embedding_size=50304, eos_token_id=50279, **overrides)


def test_requests_left_truncate_and_share_continuations() -> None:
    docs = [Doc.choices("abcdef", [" xy", " z"], 1), Doc(("ab", "cd"), (" e", " e"), 0)]
    r = build_requests(docs, CharTokenizer(), max_len=5)
    assert r.doc_ids.tolist() == [0, 0, 1, 1] and r.cont_ids.tolist() == [0, 1, 0, 1]
    # query = (context + continuation[:-1])[-5:]
    assert [chars(q) for q in r.queries] == ["def x", "cdef ", "ab ", "cd "]
    assert [chars(c) for c in r.continuations] == [" xy", " z", " e", " e"]
    assert r.cont_chars.tolist() == [2, 1, 1, 1]  # len(continuation) − 1: the leading space is not counted
    assert r.labels.tolist() == [1, 0]


def test_buckets_are_few() -> None:
    assert [length_bucket(n, 2048) for n in (0, 1, 32, 33, 100, 2000, 2048)] == [32, 32, 32, 64, 128, 2048, 2048]
    assert length_bucket(100, 96) == 96
    sizes = sorted({positions_bucket(n) for n in range(1, 2049)})
    assert sizes[:8] == [8, 12, 16, 24, 32, 48, 64, 96] and len(sizes) == 17
    assert all(positions_bucket(n) >= n and positions_bucket(n) <= max(8, 1.5 * n) for n in range(1, 2049))


def hand_made(doc_ids: list[int], cont_ids: list[int], cont_chars: list[int], labels: list[int]) -> Requests:
    return Requests(np.array(doc_ids), np.array(cont_ids), [], [], np.array(cont_chars, float), np.array(labels))


def test_scorer_picks_the_highest_log_likelihood() -> None:
    # doc 0: two choices; doc 1: three; doc 2: a tie, which the first maximum wins (torch.argmax).
    requests = hand_made([0, 0, 1, 1, 1, 2, 2], [0, 1, 0, 1, 2, 0, 1], [10, 1, 5, 5, 5, 3, 3], [0, 1, 1])
    loglikelihoods = np.array([-1.0, -2.0, -5.0, -3.0, -4.0, -2.0, -2.0])
    assert score(TASKS["copa"], requests, loglikelihoods) == pytest.approx(2 / 3)  # acc: predictions 0, 1, 0
    # len_norm divides by characters: doc 0 becomes -0.1 vs -2 (same pick); flip the lengths and it picks 1.
    assert score(TASKS["piqa"], requests, loglikelihoods) == pytest.approx(2 / 3)
    flipped = hand_made([0, 0, 1, 1, 1, 2, 2], [0, 1, 0, 1, 2, 0, 1], [1, 40, 5, 5, 5, 3, 3], [1, 1, 1])
    assert score(TASKS["piqa"], flipped, loglikelihoods) == pytest.approx(2 / 3)  # predictions 1, 1, 0
    assert score(TASKS["copa"], flipped, loglikelihoods) == pytest.approx(1 / 3)  # acc ignores the lengths


def test_scorer_dedupes_and_handles_missing_choices() -> None:
    # (doc 0, cont 1) appears twice (OLMo's sampler repeats rows): the first score counts. Doc 1 has one choice only.
    requests = hand_made([0, 0, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1], [0, 0])
    assert score(TASKS["copa"], requests, np.array([-2.0, -3.0, -1.0, -9.0])) == 1.0


def test_f1_uses_the_first_continuation_as_positive() -> None:
    labels, predictions = np.array([0, 0, 1, 1, 0]), np.array([0, 1, 1, 0, 0])
    assert f1_score(labels, predictions, positive=0) == pytest.approx(2 / 3)  # tp 2, fp 1, fn 1
    assert f1_score(labels, predictions, positive=1) == pytest.approx(1 / 2)  # tp 1, fp 1, fn 1
    assert f1_score(np.array([1, 1]), np.array([1, 1]), positive=0) == 0.0  # sklearn's zero_division=0
    requests = hand_made([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [0, 1] * 5, [3] * 10, labels.tolist())
    loglikelihoods = np.array([-1, -2, -2, -1, -2, -1, -1, -2, -1, -2], float)  # predictions 0, 1, 1, 0, 0
    assert score(TASKS["mrpc"], requests, loglikelihoods) == pytest.approx(2 / 3)


def _hf_loglikelihood(model, context: list[int], continuation: list[int], max_len: int) -> float:
    """Straight from the definition: feed the window, log-softmax, add the continuation tokens' log-probs."""
    import torch

    window = (context + continuation)[:-1][-max_len:]
    n = min(len(continuation), len(window))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([window])).logits[0].double(), dim=-1)
    targets = continuation[len(continuation) - n:]
    return sum(float(logp[len(window) - n + j, targets[j]]) for j in range(n))


@pytest.mark.network
@pytest.mark.parametrize("max_len", [256, 24])  # 24: left truncation, and continuations longer than the window
def test_loglikelihoods_match_transformers(tmp_path: Path, max_len: int) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from olmo_jax.model.hf import save_hf

    # A peaked model (large embedding init), so that a wrong position or target would change the numbers.
    config = olmo_sized(max_sequence_length=max_len, init_fn="normal", init_std=0.05, emb_init_std=0.15)
    params = init_params(config, jax.random.key(max_len))
    save_hf(config, params, tmp_path, tokenizer=tokenizer_path())
    tokenizer = Tokenizer.load(tmp_path)
    docs = [d for label, n in (("piqa", 3), ("hellaswag", 2), ("winogrande", 2), ("sciq", 2), ("boolq", 1),
                               ("copa", 2)) for d in TASKS[label].docs(limit=n)]
    requests = build_requests(docs, tokenizer, max_len)
    ours = Scorer(config, batch_size=4).loglikelihoods(params, requests)

    model = transformers.OlmoForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    theirs = []
    for d, k in zip(requests.doc_ids, requests.cont_ids, strict=True):
        context = hf_tokenizer.encode(docs[d].contexts[k], add_special_tokens=False)
        continuation = hf_tokenizer.encode(docs[d].continuations[k], add_special_tokens=False)
        theirs.append(_hf_loglikelihood(model, context, continuation, max_len))
    theirs = np.array(theirs)
    assert len(ours) == 32 and np.std(ours) > 5  # varied scores: the comparison has teeth
    assert np.abs(ours - theirs).max() <= 1e-4


def _token_file(path: Path, n_tokens: int, vocab: int, seed: int = 0) -> Path:
    np.random.default_rng(seed).integers(0, vocab, n_tokens).astype(np.uint16).tofile(path)
    return path


def test_random_model_perplexity_is_the_padded_vocabulary(tmp_path: Path) -> None:
    # Tiny embeddings make the logits ≈ 0: uniform over all 256 rows, the 6 padding rows included, as in OLMo.
    config = tiny_config(emb_init_std=1e-3)
    params = init_params(config, jax.random.key(0))
    data = _token_file(tmp_path / "val.npy", 64 * 12 + 5, config.vocab_size)
    metrics = Evaluators([EvaluatorConfig("val", "perplexity", (str(data),))], config, None, batch_size=8)(params)
    assert metrics["eval/val/Perplexity"] == pytest.approx(256, rel=2e-3)
    assert metrics["eval/val/CrossEntropyLoss"] == pytest.approx(math.log(256), rel=2e-4)


@pytest.mark.slow
def test_perplexity_is_olmos_mean_of_instance_means(tmp_path: Path) -> None:
    config = tiny_config(init_fn="normal", init_std=0.1)
    params = init_params(config, jax.random.key(1))
    data = _token_file(tmp_path / "val.npy", 64 * 11, config.vocab_size, seed=1)
    ids = np.fromfile(data, np.uint16).astype(np.int32).reshape(11, 64)
    logits = np.asarray(OLMo(config).apply({"params": params}, ids), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_instance = -np.take_along_axis(logp[:, :-1], ids[:, 1:, None], axis=-1)[..., 0].mean(-1)  # over T − 1

    evaluators = Evaluators([EvaluatorConfig("val", "perplexity", (str(data),)),
                             EvaluatorConfig("val4", "perplexity", (str(data),), limit=4)], config, None, batch_size=3)
    metrics = evaluators(params)
    assert metrics["eval/val/CrossEntropyLoss"] == pytest.approx(per_instance.mean(), rel=1e-5)
    assert metrics["eval/val4/CrossEntropyLoss"] == pytest.approx(per_instance[[0, 3, 7, 10]].mean(), rel=1e-5)
    assert metrics["eval/val/Perplexity"] == pytest.approx(math.exp(per_instance.mean()), rel=1e-5)
    assert evaluators(params) == metrics  # deterministic
    chunked = instance_losses(OLMo(config), params, ids[:4], chunk=8)
    np.testing.assert_allclose(np.asarray(chunked), per_instance[:4], rtol=1e-5)


def test_perplexity_rejects_ids_outside_the_vocabulary(tmp_path: Path) -> None:
    config = tiny_config()
    data = _token_file(tmp_path / "val.npy", 64 * 2, 300)
    evaluators = Evaluators([EvaluatorConfig("val", "perplexity", (str(data),))], config, None, batch_size=2)
    with pytest.raises(DataError, match=r"Token id \d+ .* outside the model's vocabulary \(250\)"):
        evaluators(init_params(config, jax.random.key(0)))


@pytest.mark.network
def test_evaluators_return_olmos_metric_names(tmp_path: Path) -> None:
    config = olmo_sized()
    params = init_params(config, jax.random.key(0))
    data = _token_file(tmp_path / "val.npy", 64 * 5, config.vocab_size)
    configs = [EvaluatorConfig("copa", limit=7), EvaluatorConfig("mrpc", limit=5),
               EvaluatorConfig("heldout", "perplexity", (str(data),), limit=3)]
    evaluators = Evaluators(configs, config, Tokenizer.load(), batch_size=8)
    results = evaluators.results(params)
    assert [(r.key, r.examples) for r in results] == [
        ("eval/downstream/copa_acc", 7), ("eval/downstream/mrpc_f1", 5), ("eval/heldout/CrossEntropyLoss", 3),
        ("eval/heldout/Perplexity", 3),
    ]
    assert results[0].value in {k / 7 for k in range(8)} and 0 <= results[1].value <= 1
    assert evaluators(params) == {r.key: r.value for r in results}


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(label="copa", type="lm"), r"type='lm' must be one of \['downstream', 'perplexity'\]"),
    (dict(label="hellaswagg"), "Unknown downstream task 'hellaswagg'"),
    (dict(label="c4", type="perplexity"), "needs paths"),
    (dict(label="copa", limit=0), "limit=0 must be positive"),
])
def test_bad_evaluator_configs(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EvaluatorConfig(**kwargs)


def test_duplicate_labels_and_bad_tokenizer_are_errors(tokenizer_json: Path) -> None:
    with pytest.raises(ConfigError, match="labels must be unique"):
        Evaluators([EvaluatorConfig("copa"), EvaluatorConfig("copa", limit=3)], tiny_config(), None, 8)
    small = tiny_config(vocab_size=200, embedding_size=256, eos_token_id=199)
    evaluators = Evaluators([EvaluatorConfig("copa", limit=3)], small, Tokenizer(tokenizer_json, 0, 1), 8)
    with pytest.raises(TaskDataError, match=r"produced token id \d+, outside the model's vocabulary of 200"):
        evaluators.prepare()


SHARDED = """
import jax, numpy as np, sys
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
sys.path.insert(0, "tests")
from conftest import tiny_config
from olmo_jax.eval.evaluators import EvaluatorConfig, Evaluators
from olmo_jax.model.transformer import init_params
config = tiny_config(init_fn="normal", init_std=0.1)
params = init_params(config, jax.random.key(0))
np.random.default_rng(0).integers(0, 250, 64 * 6).astype(np.uint16).tofile(sys.argv[1])
evaluators = Evaluators([EvaluatorConfig("val", "perplexity", (sys.argv[1],))], config, None, 4)
mesh = jax.make_mesh((4,), ("fsdp",), axis_types=(AxisType.Auto,))
shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("fsdp") if x.shape[0] % 4 == 0 else P()))
with jax.set_mesh(mesh):
    print(evaluators(params)["eval/val/CrossEntropyLoss"], evaluators(jax.tree.map(shard, params))[
        "eval/val/CrossEntropyLoss"])
"""


@pytest.mark.slow
def test_params_sharded_over_devices(tmp_path: Path) -> None:
    result = run_python("-c", SHARDED, str(tmp_path / "val.npy"), env={"JAX_NUM_CPU_DEVICES": "4"})
    assert result.returncode == 0, result.stderr
    single, sharded = map(float, result.stdout.split())
    assert sharded == pytest.approx(single, rel=1e-6)
