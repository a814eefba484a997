"""Evaluation as OLMo runs it in the training loop (docs/olmo_facts.md §8): downstream multiple-choice tasks scored by
continuation log-likelihood, and perplexity on held-out token files.

Requests are built once (tokenized, left-truncated to the model's context), sorted by length and cut into batches of
a fixed size whose query length T is rounded up to a few bucket sizes, so XLA compiles the forward pass a handful of
times. Only the continuation positions are projected onto the vocabulary, packed flat (K of them per batch, also
bucketed): that projection dominates a small model's cost.

We compute log-softmax on fp32 logits; OLMo computes it on bf16 logits (§11.6), so OLMo's scores are bf16-rounded.

Dimension letters: B batch, T query length, K scored positions in a batch, D d_model, V padded vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from olmo_jax.data.token_files import TokenFiles
from olmo_jax.data.tokenizer import Tokenizer
from olmo_jax.errors import ConfigError, DataError, TaskDataError
from olmo_jax.eval.config import EvaluatorConfig
from olmo_jax.eval.tasks import Doc, Task, get_task
from olmo_jax.model.config import ModelConfig, RunOptions
from olmo_jax.model.transformer import OLMo
from olmo_jax.parallel.mesh import to_host
from olmo_jax.train.loss import next_token_losses

Array = jax.Array
MIN_LENGTH = 32  # the smallest padded query length, so short queries do not each get their own compiled shape


@dataclasses.dataclass(frozen=True)
class Result:
    label: str
    metric: str  # acc | len_norm | f1 | CrossEntropyLoss | Perplexity
    value: float
    examples: int  # documents (downstream) or instances (perplexity) evaluated

    @property
    def key(self) -> str:
        """OLMo's metric names (olmo/eval/evaluator.py)."""
        if self.metric in ("CrossEntropyLoss", "Perplexity"):
            return f"eval/{self.label}/{self.metric}"
        return f"eval/downstream/{self.label}_{self.metric}"


@dataclasses.dataclass(frozen=True)
class Requests:
    """A task's requests, tokenized. Request r scores continuation cont_ids[r] of document doc_ids[r]."""

    doc_ids: np.ndarray  # [R]
    cont_ids: np.ndarray  # [R]
    queries: list[np.ndarray]  # (context + continuation[:-1])[-max_len:]
    continuations: list[np.ndarray]
    cont_chars: np.ndarray  # [R] len(continuation string) − 1: characters without the leading space (len_norm)
    labels: np.ndarray  # [N] one per document


def build_requests(docs: Sequence[Doc], tokenizer: Tokenizer, max_len: int) -> Requests:
    """Tokenize contexts and continuations separately, without special tokens, and left-truncate each query to
    `max_len` tokens, as OLMo's `ICLMultiChoiceTaskDataset.prep_examples` does (§8.4)."""
    pairs = [(d, k) for d, doc in enumerate(docs) for k in range(len(doc.continuations))]
    texts = sorted({s for doc in docs for s in (*doc.contexts, *doc.continuations)})
    ids = dict(zip(texts, tokenizer.encode_batch(texts, add_special_tokens=False), strict=True))
    queries, continuations = [], []
    for d, k in pairs:
        context, continuation = ids[docs[d].contexts[k]], ids[docs[d].continuations[k]]
        queries.append(np.asarray((context + continuation[:-1])[-max_len:], np.int32))
        continuations.append(np.asarray(continuation, np.int32))
    return Requests(
        doc_ids=np.array([d for d, _ in pairs], np.int64),
        cont_ids=np.array([k for _, k in pairs], np.int64),
        queries=queries,
        continuations=continuations,
        cont_chars=np.array([len(docs[d].continuations[k]) - 1 for d, k in pairs], np.float64),
        labels=np.array([doc.label for doc in docs], np.int64),
    )


def length_bucket(n: int, cap: int) -> int:
    """The padded query length for n tokens: the next power of two, at least MIN_LENGTH, at most `cap`."""
    return min(cap, max(MIN_LENGTH, 1 << max(n - 1, 0).bit_length()))


def positions_bucket(n: int) -> int:
    """The padded number of scored positions: the next of 8, 12, 16, 24, 32, 48, ... (powers of two and 1.5 times
    them), so padding wastes at most a third of the projection's work."""
    size = 8
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def gather_positions(hidden: Array, rows: Array, positions: Array) -> Array:
    """hidden [B, T, D]; rows, positions [K] → [K, D]."""
    return hidden[rows, positions]


def continuation_logprobs(
    model: OLMo, params: Any, hidden: Array, rows: Array, targets: Array, mask: Array, batch_size: int
) -> Array:
    """Per-row sums of log p(target) over a flat list of K scored positions.

    hidden [K, D] (the gathered positions); rows, targets, mask [K] → [batch_size] float32. Packing the positions
    flat wastes no projection work on rows with short continuations. The logits are made up to 128 positions at a
    time: a [K, V] block would be fresh memory on every call, and page faults cost a CPU as much as the exp.
    """
    k = hidden.shape[0]
    chunk = math.gcd(k, 128)

    def chunk_logprobs(args: tuple[Array, Array]) -> Array:
        h, y = args  # [c, D], [c]
        logits = model.apply({"params": params}, h, method=OLMo.logits)  # [c, V] fp32
        picked = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)  # log-softmax over all V rows, padding rows too, as OLMo

    logp = jax.lax.map(chunk_logprobs, (hidden.reshape(k // chunk, chunk, -1), targets.reshape(k // chunk, chunk)))
    return jax.ops.segment_sum(jnp.where(mask, logp.reshape(k), 0.0), rows, num_segments=batch_size)


def instance_losses(model: OLMo, params: Any, ids: Array, chunk: int) -> Array:
    """Per-instance mean cross-entropy over its T − 1 predicted positions (OLMo's eval loss, §8.4).

    ids [B, T] → [B] float32. Logits are made `chunk` positions at a time, so [B, T, V] never exists at once.
    """
    losses, _ = next_token_losses(model, params, ids, chunk)  # [B, T]; the last position predicts nothing
    return jnp.sum(losses[:, :-1], axis=-1) / (ids.shape[1] - 1)


def loss_chunk(t: int, batch_size: int) -> int:
    """Positions per logits block in `instance_losses`: the largest power of two dividing t with at most 1,024
    positions (a [1024, V] fp32 block) in the batch."""
    return next(c for c in (256, 128, 64, 32, 16, 8, 4, 2, 1) if t % c == 0 and (c * batch_size <= 1024 or c == 1))


class Scorer:
    """The jitted forward passes for one model config; params are arguments, so any checkpoint (numpy arrays or
    sharded jax Arrays) can be scored without recompiling."""

    def __init__(self, model_config: ModelConfig, batch_size: int, options: RunOptions | None = None) -> None:
        if batch_size <= 0:
            raise ConfigError(f"eval batch size {batch_size} must be positive.")
        self.config = model_config
        self.batch_size = batch_size
        model = OLMo(model_config, options or RunOptions())
        self._hidden = jax.jit(functools.partial(model.apply, method=OLMo.hidden_states))
        # Three functions, so that the model compiles once per T, the projection once per K, and only the trivial
        # gather once per (T, K).
        self._gather = jax.jit(gather_positions)
        self._score = jax.jit(functools.partial(continuation_logprobs, model), static_argnames="batch_size")
        self._losses = jax.jit(functools.partial(instance_losses, model), static_argnames="chunk")

    def loglikelihoods(self, params: Any, requests: Requests) -> np.ndarray:
        """Summed continuation log-probabilities [R], request by request as OLMo's ICLMetric.update (§8.4).

        Queries are right-padded with pad id 1 (harmless under causal attention). A continuation longer than the
        query (it cannot happen at 2048 tokens, but can at a tiny model's context) is scored on the tokens that have a
        predicting position in the window, i.e. its last len(query) tokens.
        """
        b, pad = self.batch_size, self.config.pad_token_id
        lengths = np.array([len(q) for q in requests.queries])
        order = np.argsort(lengths, kind="stable")
        outputs = []
        for start in range(0, len(order), b):
            batch = order[start:start + b]
            t = length_bucket(int(lengths[batch].max()), self.config.max_sequence_length)
            ids = np.full((b, t), pad, np.int32)
            rows, positions, targets = [], [], []
            for i, r in enumerate(batch):
                query, continuation = requests.queries[r], requests.continuations[r]
                n = min(len(continuation), len(query))
                ids[i, :len(query)] = query
                rows.append(np.full(n, i))
                positions.append(np.arange(len(query) - n, len(query)))  # the query's last n positions
                targets.append(continuation[len(continuation) - n:])
            flat = [np.concatenate(x).astype(np.int32) for x in (rows, positions, targets)]
            k = positions_bucket(len(flat[0]))
            rows_k, positions_k, targets_k = (np.pad(x, (0, k - len(x))) for x in flat)
            mask = np.arange(k) < len(flat[0])
            hidden = self._gather(self._hidden({"params": params}, ids), rows_k, positions_k)
            sums = self._score(params, hidden, rows_k, targets_k, mask, b)  # stays on device until the end
            outputs.append((batch, sums))
        scores = np.zeros(len(order), np.float64)
        for batch, sums in outputs:
            scores[batch] = to_host(sums)[:len(batch)]
        return scores

    def perplexity(self, params: Any, files: TokenFiles, instances: np.ndarray) -> float:
        """Mean over instances of each instance's mean cross-entropy (OLMo's MeanMetric over per-instance losses)."""
        b, t = self.batch_size, files.seq_len
        outputs = []
        for start in range(0, len(instances), b):
            rows = instances[start:start + b]
            ids = np.full((b, t), self.config.pad_token_id, np.int32)
            ids[:len(rows)] = files.read(rows)
            if ids.view(np.uint32).max() >= self.config.vocab_size:  # a uint32 id ≥ 2^31 reads as negative int32
                raise DataError(
                    f"Token id {ids.view(np.uint32).max()} in {files.paths} is outside the model's vocabulary "
                    f"({self.config.vocab_size}); is memmap_dtype right, and was the data made with this tokenizer?"
                )
            outputs.append((len(rows), self._losses(params, ids, chunk=loss_chunk(t, b))))
        losses = np.concatenate([to_host(out).astype(np.float64)[:n] for n, out in outputs])
        return float(losses.mean())


def score(task: Task, requests: Requests, loglikelihoods: np.ndarray) -> float:
    """OLMo's ICLMetric.compute (§8.4): per-request scores by the task's metric, deduplicated by (doc, continuation),
    prediction = the first maximum; accuracy, or F1 with continuation 0 as the positive class."""
    values = loglikelihoods
    if task.metric == "len_norm":
        with np.errstate(divide="ignore", invalid="ignore"):  # OLMo divides as is; no dataset has a 0-char answer
            values = loglikelihoods / requests.cont_chars
    # A (doc, continuation) pair counts once, with its first score; a document's missing continuations (ARC has
    # 3 to 5 choices) stay at -inf, so they are never predicted.
    cells = requests.doc_ids * (int(requests.cont_ids.max()) + 1) + requests.cont_ids
    _, first = np.unique(cells, return_index=True)
    table = np.full((len(requests.labels), int(requests.cont_ids.max()) + 1), -np.inf)
    table[requests.doc_ids[first], requests.cont_ids[first]] = values[first]
    predictions = np.argmax(table, axis=1)  # the first maximum, as torch.argmax
    if task.metric == "f1":
        return f1_score(requests.labels, predictions, positive=0)
    return float(np.mean(predictions == requests.labels))


def f1_score(labels: np.ndarray, predictions: np.ndarray, positive: int) -> float:
    """Binary F1 of class `positive`, as sklearn's f1_score(pos_label=positive) (0 when it is never predicted nor
    present)."""
    tp = np.sum((predictions == positive) & (labels == positive))
    fp = np.sum((predictions == positive) & (labels != positive))
    fn = np.sum((predictions != positive) & (labels == positive))
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 0.0


class Evaluators:
    """Every configured evaluator, for the training loop (every eval_interval and at the end) and the CLI.

    Requests are built (files opened, text tokenized) on the first call and kept; `__call__(params)` returns OLMo's
    metric names → values: `eval/downstream/{task}_{metric}`, `eval/{set}/CrossEntropyLoss`, `eval/{set}/Perplexity`.
    """

    def __init__(
        self, configs: Sequence[EvaluatorConfig], model_config: ModelConfig, tokenizer: Tokenizer | None,
        batch_size: int, memmap_dtype: str = "uint16", options: RunOptions | None = None,
    ) -> None:
        labels = [c.label for c in configs]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"Evaluator labels must be unique; got {labels}.")
        self.configs = tuple(configs)
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.memmap_dtype = memmap_dtype
        self.scorer = Scorer(model_config, batch_size, options)
        # Per evaluator: (config, its task and requests) or (config, its token files and instance indices).
        self._prepared: list[tuple[EvaluatorConfig, Task | TokenFiles, Requests | np.ndarray]] | None = None

    def prepare(self) -> None:
        """Read and tokenize every evaluator's data (done once, on the first call)."""
        if self._prepared is not None:
            return
        prepared = []
        for config in self.configs:
            if config.type == "downstream":
                task = get_task(config.label)
                docs = task.docs(config.paths, config.limit)
                if not docs:
                    raise TaskDataError(f"Task {config.label!r} has no examples in {config.paths or task.asset}.")
                prepared.append((config, task, self._requests(docs)))
            else:
                files = TokenFiles(config.paths, self.memmap_dtype, self.model_config.max_sequence_length)
                if files.num_instances == 0:
                    raise DataError(f"Perplexity set {config.label!r}: {config.paths} hold no full instance of "
                                    f"{files.seq_len} tokens.")
                prepared.append((config, files, evenly_spaced(files.num_instances, config.limit)))
        self._prepared = prepared

    def _requests(self, docs: Sequence[Doc]) -> Requests:
        m = self.model_config
        if self.tokenizer is None:
            self.tokenizer = Tokenizer.load(None, m.eos_token_id, m.pad_token_id)
        requests = build_requests(docs, self.tokenizer, m.max_sequence_length)
        top = max(int(ids.max(initial=0)) for ids in (*requests.queries, *requests.continuations))
        if top >= m.vocab_size:
            raise TaskDataError(
                f"Tokenizer {self.tokenizer.path} produced token id {top}, outside the model's vocabulary of "
                f"{m.vocab_size}; evaluate with the tokenizer the model was trained with."
            )
        return requests

    def results(self, params: Any) -> list[Result]:
        """Run every evaluator on `params` (numpy or jax arrays, sharded or not), in the configured order."""
        self.prepare()
        results = []
        for config, source, selection in self._prepared:
            if isinstance(source, Task):
                value = score(source, selection, self.scorer.loglikelihoods(params, selection))
                results.append(Result(config.label, source.metric, value, len(selection.labels)))
            else:
                loss = self.scorer.perplexity(params, source, selection)
                results.append(Result(config.label, "CrossEntropyLoss", loss, len(selection)))
                results.append(Result(config.label, "Perplexity", math.exp(loss), len(selection)))
        return results

    def __call__(self, params: Any) -> dict[str, float]:
        return {r.key: r.value for r in self.results(params)}


def evenly_spaced(n: int, limit: int | None) -> np.ndarray:
    """All n instance indices, or `limit` of them spread evenly over the set (deterministic)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).round().astype(np.int64)
