"""Text generation: batched autoregressive decoding with a preallocated KV cache, compiled into one XLA program.

    python -m olmo_jax.generate --checkpoint runs/tiny --prompt "Language modeling is" [--max_new_tokens 50]
    python -m olmo_jax.generate --hf path/to/OLMo-1B-hf --prompt "Language modeling is" --temperature 0.8 --top_p 0.95

`--checkpoint` is a run directory (its newest complete checkpoint), its `checkpoints/` folder or one step folder;
`--hf` a Hugging Face OLMo directory. In Python:

    lm = LanguageModel.from_checkpoint("runs/tiny")       # or LanguageModel.from_hf(path)
    ids = lm.tokenizer.encode("Language modeling is", add_special_tokens=False)
    new_ids = lm.generate(ids, max_new_tokens=50)          # the new tokens only, EOS included if reached
    print(lm.tokenizer.decode(ids + new_ids))

Prompts of different lengths are left-padded into one batch, as transformers does: every row's last prompt token
sits in the same cache slot, a row's positions count from its first real token (slot − its pad count) and its pad
slots are masked out as keys. One jitted function runs the prefill and then a `while_loop` over the new tokens that
ends early once every row has emitted EOS. Sampling follows transformers' order: temperature, then top-k, then top-p.

Dimension letters as in olmo_jax/model/transformer.py, plus P prompt slots (the longest prompt rounded up to a
bucket), M new-token slots (max_new_tokens rounded up), S = P + M cache slots.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from olmo_jax import cli
from olmo_jax.errors import UsageError
from olmo_jax.model.config import AttentionImpl, ComputeDtype, ModelConfig, RunOptions
from olmo_jax.model.transformer import OLMo

Array = jax.Array
Params = dict[str, Any]

# Prompt lengths and max_new_tokens are rounded up to a power of two at least this large, so that a session of
# varied requests compiles a handful of programs rather than one per length.
_MIN_BUCKET = 16


def filter_logits(logits: Array, top_k: int | None = None, top_p: Array | float | None = None) -> Array:
    """Set to -inf all logits [B, V] outside the top_k largest, then outside the nucleus of probability top_p.

    The nucleus is transformers' `TopPLogitsWarper`: the smallest set of most likely tokens whose cumulative
    probability reaches top_p (a token is kept when the mass of the tokens above it is below top_p), so the most
    likely token always survives. Ties at a cut-off are all kept. `top_k` is static (it sets a shape).
    """
    if top_k is None and top_p is None:
        return logits
    # The kept candidates in descending order: [B, k], or [B, V] without top-k.
    values = -jnp.sort(-logits, axis=-1) if top_k is None else jax.lax.top_k(logits, top_k)[0]
    threshold = values[:, -1:]
    if top_p is not None:
        probs = jax.nn.softmax(values, axis=-1)
        mass_above = jnp.cumsum(probs, axis=-1) - probs
        threshold = jnp.min(jnp.where(mass_above < top_p, values, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


def next_token(
    logits: Array, key: Array, temperature: Array | float, top_k: int | None, top_p: Array | float | None,
    greedy: bool,
) -> Array:
    """Logits [B, V] → token ids [B]: argmax when greedy, else a sample after temperature, top-k and top-p."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / temperature, top_k, top_p)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("config", "options", "new_slots", "greedy", "top_k", "use_top_p"))
def _generate_slots(
    params: Params, prompt: Array, pads: Array, key: Array, temperature: Array, top_p: Array, max_new_tokens: Array,
    eos: Array, *, config: ModelConfig, options: RunOptions, new_slots: int, greedy: bool, top_k: int | None,
    use_top_p: bool,
) -> Array:
    """Left-padded prompts [B, P] with pad counts [B] → new tokens [B, M]; slots past a row's `eos` (-1: none) or
    past max_new_tokens hold pad_token_id."""
    model = OLMo(config, options)
    b, p = prompt.shape
    slots = jnp.arange(p + new_slots)  # [S]
    key_mask = slots[None, :] >= pads[:, None]  # [B, S]: False on each row's left padding
    lengths = p - pads  # [B]
    cache_shape = (b, p + new_slots, config.kv_heads, config.head_dim)
    cache = [(jnp.zeros(cache_shape, options.dtype), jnp.zeros(cache_shape, options.dtype))
             for _ in range(config.n_layers)]
    # Padding rows of the embedding (ids ≥ the tokenizer's vocab_size) are never emitted.
    in_vocab = jnp.arange(config.padded_vocab) < config.vocab_size  # [V]

    def pick(logits: Array, step: Array) -> Array:
        logits = jnp.where(in_vocab, logits, -jnp.inf)
        return next_token(logits, jax.random.fold_in(key, step), temperature, top_k, top_p if use_top_p else None,
                          greedy)

    positions = jnp.maximum(slots[None, :p] - pads[:, None], 0)  # [B, P]; pad slots get 0 and are masked anyway
    # Every row's prompt ends in the last prompt slot, so the prefill needs that slot's logits only.
    logits, cache = model.apply({"params": params}, prompt, positions, cache, 0, key_mask, True, method=OLMo.decode)
    first = pick(logits[:, 0], jnp.int32(0))
    tokens = jnp.full((b, new_slots), config.pad_token_id, jnp.int32).at[:, 0].set(first)  # [B, M]
    done = first == eos  # [B]

    def unfinished(state: tuple) -> Array:
        step, _, _, done = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def decode_one(state: tuple) -> tuple:
        step, tokens, cache, done = state  # step: the index of the token to produce, ≥ 1
        previous = jax.lax.dynamic_index_in_dim(tokens, step - 1, axis=1)  # [B, 1]
        logits, cache = model.apply({"params": params}, previous, (lengths + step - 1)[:, None], cache,
                                    p + step - 1, key_mask, method=OLMo.decode)
        token = jnp.where(done, config.pad_token_id, pick(logits[:, 0], step))
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, token, step, axis=1)
        return step + 1, tokens, cache, done | (token == eos)

    _, tokens, _, _ = jax.lax.while_loop(unfinished, decode_one, (jnp.int32(1), tokens, cache, done))
    return tokens


def bucket(n: int) -> int:
    """The compiled size for n slots: the next power of two, at least 16."""
    return max(_MIN_BUCKET, 1 << (n - 1).bit_length())


def generate(
    config: ModelConfig, params: Params, prompts: Sequence[Sequence[int]], max_new_tokens: int = 50,
    temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
    stop_at_eos: bool = True, options: RunOptions | None = None,
) -> list[list[int]]:
    """Continue each prompt (a list of token ids) by up to max_new_tokens tokens; returns the new tokens only.

    options: how the model runs (default: `default_options()`, bf16 on a GPU, fp32 elsewhere; remat never helps
    decoding and is ignored).

    temperature 0 is greedy decoding (top_k and top_p are then irrelevant); otherwise tokens are sampled with
    jax.random from `seed`, after top-k and top-p filtering. A row stops after emitting config.eos_token_id (kept as
    its last token) unless stop_at_eos is False. Ids at or above config.vocab_size (embedding padding) never appear.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    _check_prompts(config, prompts, max_new_tokens)
    options = dataclasses.replace(options or default_options(), remat="none")
    p = bucket(max(len(prompt) for prompt in prompts))
    batch = np.full((len(prompts), p), config.pad_token_id, np.int32)
    for row, prompt in zip(batch, prompts, strict=True):
        row[p - len(prompt):] = prompt
    pads = np.array([p - len(prompt) for prompt in prompts], np.int32)
    greedy = temperature == 0
    tokens = _generate_slots(
        params, batch, pads, jax.random.key(seed), np.float32(temperature or 1.0), np.float32(top_p or 1.0),
        np.int32(max_new_tokens), np.int32(config.eos_token_id if stop_at_eos else -1), config=config,
        options=options, new_slots=bucket(max_new_tokens), greedy=greedy,
        top_k=None if greedy or top_k is None or top_k >= config.vocab_size else top_k,
        use_top_p=not greedy and top_p is not None and top_p < 1.0,
    )
    return [_trim(row[:max_new_tokens], config.eos_token_id if stop_at_eos else None)
            for row in np.asarray(tokens).tolist()]


def _trim(tokens: list[int], eos: int | None) -> list[int]:
    return tokens[:tokens.index(eos) + 1] if eos is not None and eos in tokens else tokens


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise UsageError naming every out-of-range sampling setting."""
    problems = []
    if max_new_tokens < 1:
        problems.append(f"max_new_tokens={max_new_tokens} must be at least 1")
    if temperature < 0:
        problems.append(f"temperature={temperature} must be ≥ 0 (0 is greedy decoding)")
    if top_k is not None and top_k < 1:
        problems.append(f"top_k={top_k} must be at least 1 (or None for no top-k filtering)")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"top_p={top_p} must be in (0, 1] (or None for no nucleus filtering)")
    if problems:
        raise UsageError("Cannot generate: " + "; ".join(problems) + ".")


def _check_prompts(config: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    if not prompts:
        raise UsageError("No prompts given: pass a list of token-id lists.")
    problems = []
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            problems.append(f"prompt {i} is empty (OLMo has no BOS token to start from: give at least one token)")
        elif not all(0 <= t < config.vocab_size for t in prompt):
            bad = next(t for t in prompt if not 0 <= t < config.vocab_size)
            problems.append(f"prompt {i} holds token id {bad}, outside the model's vocabulary [0, {config.vocab_size})")
        elif len(prompt) + max_new_tokens > config.max_sequence_length:
            problems.append(f"prompt {i} has {len(prompt)} tokens, which with max_new_tokens={max_new_tokens} "
                            f"exceeds the model's context of {config.max_sequence_length} tokens")
    if problems:
        raise UsageError("Cannot generate: " + "; ".join(problems) + ".")


def default_options(dtype: ComputeDtype | None = None, attention_impl: AttentionImpl = "auto") -> RunOptions:
    """bf16 compute on a GPU (OLMo's amp_bf16), fp32 elsewhere (bf16 matmuls are slow on CPUs), unless `dtype`."""
    return RunOptions(dtype=dtype or ("bfloat16" if jax.default_backend() == "gpu" else "float32"),
                      attention_impl=attention_impl)


class LanguageModel:
    """An OLMo with its parameters and tokenizer: `generate` on token ids, `complete` on text."""

    def __init__(self, config: ModelConfig, params: Params, tokenizer: str | Path | None = None,
                 options: RunOptions | None = None) -> None:
        """`tokenizer`: a tokenizer.json, a directory holding one or a name known to olmo_jax.data.tokenizer
        (default: OLMo's), loaded on first use. `options`: how the model runs (default: `default_options()`)."""
        self.config = config
        self.options = dataclasses.replace(options or default_options(), remat="none")
        # Parameters are stored in the compute dtype: the model casts them at every call anyway, and decoding reads
        # every weight once per token, so half the bytes is nearly twice the speed in bf16.
        self.params = jax.tree.map(lambda x: jnp.asarray(x, self.options.dtype), params)
        self._tokenizer_source = tokenizer

    @classmethod
    def from_checkpoint(cls, path: str | Path, tokenizer: str | Path | None = None,
                        dtype: ComputeDtype | None = None, attention_impl: AttentionImpl = "auto") -> LanguageModel:
        """The newest complete step of a run directory, its checkpoints/ folder or one step folder; the tokenizer
        defaults to the one the run was configured with. How it runs is chosen here, not by the checkpoint."""
        from olmo_jax.train.checkpoint import load_params, tokenizer_of

        config, params, meta = load_params(path)
        return cls(config, params, tokenizer or tokenizer_of(meta), default_options(dtype, attention_impl))

    @classmethod
    def from_hf(cls, path: str | Path, tokenizer: str | Path | None = None,
                dtype: ComputeDtype | None = None, attention_impl: AttentionImpl = "auto") -> LanguageModel:
        """A Hugging Face OLMo directory; its tokenizer.json is used unless `tokenizer` is given."""
        from olmo_jax.model.hf import load_hf

        config, params = load_hf(path)
        if tokenizer is None and (Path(path) / "tokenizer.json").exists():
            tokenizer = Path(path) / "tokenizer.json"
        return cls(config, params, tokenizer, default_options(dtype, attention_impl))

    @functools.cached_property
    def tokenizer(self) -> Any:
        from olmo_jax.data.tokenizer import Tokenizer

        return Tokenizer.load(self._tokenizer_source, self.config.eos_token_id, self.config.pad_token_id)

    def generate(self, ids: Sequence[int] | Sequence[Sequence[int]], max_new_tokens: int = 50,
                 **sampling: Any) -> list[int] | list[list[int]]:
        """New token ids after one prompt (a list of ids) or after each of several; `sampling` as in `generate`."""
        single = len(ids) > 0 and not isinstance(ids[0], Sequence | np.ndarray)
        prompts = [list(ids)] if single else [list(p) for p in ids]
        out = generate(self.config, self.params, prompts, max_new_tokens, options=self.options, **sampling)
        return out[0] if single else out

    def complete(self, texts: str | Sequence[str], max_new_tokens: int = 50, **sampling: Any) -> str | list[str]:
        """The text generated after one prompt or after each of several (the prompt itself not included)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        prompts = self.tokenizer.encode_batch(batch, add_special_tokens=False)
        new = generate(self.config, self.params, prompts, max_new_tokens, options=self.options, **sampling)
        out = [self.tokenizer.decode(ids) for ids in new]
        return out[0] if isinstance(texts, str) else out


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m olmo_jax.generate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run directory, its checkpoints/ folder or one step folder")
    source.add_argument("--hf", help="Hugging Face OLMo directory (config.json + safetensors)")
    parser.add_argument("--prompt", action="append", required=True, help="text to continue; repeat for a batch")
    parser.add_argument("--max_new_tokens", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    parser.add_argument("--top_k", type=int, help="sample from the k most likely tokens only")
    parser.add_argument("--top_p", type=float, help="sample from the smallest set of tokens with this probability")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", help="tokenizer.json or known name (default: the HF dir's, else the run's)")
    parser.add_argument("--dtype", choices=ComputeDtype.__args__, help="compute dtype (default: bf16 on GPU)")
    parser.add_argument("--attention_impl", choices=AttentionImpl.__args__, default="auto",
                        help="auto: cuDNN flash attention on a GPU in bf16, XLA elsewhere")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, _ = parser().parse_with_overrides(argv)
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)  # before a slow load
    from olmo_jax.model.attention import attention_impl

    attention_impl(default_options(args.dtype, args.attention_impl))
    if args.hf is not None:
        lm = LanguageModel.from_hf(args.hf, args.tokenizer, args.dtype, args.attention_impl)
    else:
        lm = LanguageModel.from_checkpoint(args.checkpoint, args.tokenizer, args.dtype, args.attention_impl)
    completions = lm.complete(args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, seed=args.seed)
    print("\n\n".join(prompt + completion for prompt, completion in zip(args.prompt, completions, strict=True)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
