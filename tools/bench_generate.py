"""Greedy decoding speed on CPU: olmo_jax.generate against transformers' generate on the same weights.

    python tools/bench_generate.py [--batch_sizes 1 8] [--prompt_len 32] [--new_tokens 128] [--repeats 5] [--json]

A small random OLMo (d_model 256, 4 layers, 4 heads, OLMo's 50,304-row vocabulary, fp32) is exported with
olmo_jax.model.hf.save_hf and loaded by transformers' OlmoForCausalLM. Both decode greedily with a KV cache and never
stop early (EOS disabled on both sides). Time to first token is the time of a max_new_tokens=1 call (prefill, first
token, result on the host); decode speed is the remaining new_tokens − 1 tokens per row over the extra time of the
full call. Medians of `--repeats` timed calls after a warm-up call (which includes our compilation).

Both libraries get the same `--threads` cores (default: all this process may use): the process is pinned to them
before jax and torch start, which sizes XLA's CPU thread pool, and torch.set_num_threads is set to match. On a
machine shared with other work, torch's OpenMP threads slow down sharply once the cores are oversubscribed; compare
`--threads 1` there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from olmo_jax import cli
from olmo_jax.errors import ConfigError

# The model: d_model 256, 4 layers, OLMo's padded vocabulary, all of it sampleable as in transformers; the other
# fields are OLMo-1B's (configs/1b.py). It runs in fp32 (RunOptions(dtype="float32")).
MODEL = dict(d_model=256, n_heads=4, n_kv_heads=None, n_layers=4, mlp_ratio=8, mlp_hidden_size=None,
             max_sequence_length=512, vocab_size=50304, embedding_size=50304, weight_tying=True, rope_theta=10_000.0,
             clip_qkv=None, layer_norm_eps=1e-5, init_fn="normal", init_std=0.02, init_cutoff_factor=None,
             emb_init_std=None, eos_token_id=50279, pad_token_id=1)


def measure(run: Callable[[int], list[list[int]]], batch: int, new_tokens: int, repeats: int) -> dict[str, float]:
    from olmo_jax.train.profiling import median_seconds  # here: after run() has pinned the CPUs XLA sizes its pool from

    ttft = median_seconds(lambda: run(1), repeats)
    total = median_seconds(lambda: run(new_tokens), repeats)
    return {
        "time_to_first_token_ms": 1e3 * ttft,
        "decode_tokens_per_s": batch * (new_tokens - 1) / (total - ttft),
        "end_to_end_s": total,
    }


def run(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python tools/bench_generate.py", description=__doc__)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="cores for each library")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args, _ = parser.parse_with_overrides(argv)
    cores = sorted(os.sched_getaffinity(0))
    if not 1 <= args.threads <= len(cores):
        parser.error(f"--threads {args.threads} must be between 1 and the {len(cores)} cores available")
    os.sched_setaffinity(0, cores[: args.threads])
    results, setup = measure_all(args)
    if args.json:
        print(json.dumps({"setup": setup, "results": results}, indent=2))
        return 0
    print(", ".join(f"{k} {v}" for k, v in setup.items()))
    print(f"{'batch':>5} {'library':>12} {'TTFT ms':>9} {'decode tok/s':>13} {'total s':>8}")
    for row in results:
        for name in ("olmo_jax", "transformers"):
            m = row[name]
            print(f"{row['batch']:>5} {name:>12} {m['time_to_first_token_ms']:>9.1f} {m['decode_tokens_per_s']:>13.1f} "
                  f"{m['end_to_end_s']:>8.2f}")
        print(f"{row['batch']:>5} {'ratio':>12} {row['ttft_speedup']:>8.2f}x {row['decode_speedup']:>12.2f}x "
              f"  (olmo_jax / transformers; same greedy tokens: {row['same_tokens_fraction']:.0%})")
    return 0


def measure_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    # Imported only now, after pinning the process: XLA sizes its thread pool from the cores it may use at start.
    import jax

    try:
        import torch
        import transformers
    except ImportError as e:
        raise ConfigError(f"tools/bench_generate.py compares against transformers and needs torch and transformers "
                          f"({e}): pip install -e '.[test]'") from e

    from olmo_jax.generate import generate
    from olmo_jax.model.config import ModelConfig, RunOptions
    from olmo_jax.model.hf import save_hf
    from olmo_jax.model.transformer import init_params

    config = ModelConfig(**MODEL)
    options = RunOptions(dtype="float32", attention_impl="auto", remat="none")
    torch.set_num_threads(args.threads)
    params = init_params(config, jax.random.key(0))
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(config, params, tmp)
        hf_model = transformers.OlmoForCausalLM.from_pretrained(tmp).eval()
    hf_model.generation_config.eos_token_id = None  # decode every token, as ours does with stop_at_eos=False

    results = []
    for batch in args.batch_sizes:
        prompts = np.random.default_rng(batch).integers(2, config.vocab_size, (batch, args.prompt_len))

        def ours(n: int, prompts: np.ndarray = prompts) -> list[list[int]]:
            return generate(config, params, prompts.tolist(), max_new_tokens=n, stop_at_eos=False, options=options)

        def theirs(n: int, prompts: np.ndarray = prompts) -> list[list[int]]:
            with torch.no_grad():
                ids = torch.tensor(prompts)
                out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                        use_cache=True, pad_token_id=config.pad_token_id)
            return out[:, args.prompt_len:].tolist()

        ours_tokens, their_tokens = np.array(ours(args.new_tokens)), np.array(theirs(args.new_tokens))
        row = {"batch": batch, "same_tokens_fraction": float((ours_tokens == their_tokens).mean()),
               "olmo_jax": measure(ours, batch, args.new_tokens, args.repeats),
               "transformers": measure(theirs, batch, args.new_tokens, args.repeats)}
        row["decode_speedup"] = row["olmo_jax"]["decode_tokens_per_s"] / row["transformers"]["decode_tokens_per_s"]
        row["ttft_speedup"] = (row["transformers"]["time_to_first_token_ms"]
                               / row["olmo_jax"]["time_to_first_token_ms"])
        results.append(row)

    setup = {"model": f"d_model {config.d_model}, {config.n_layers} layers, vocab {config.padded_vocab}, fp32, "
                      f"{config.num_params():,} params",
             "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
             "threads": args.threads, "jax": jax.__version__, "torch": torch.__version__,
             "transformers": transformers.__version__}
    return results, setup


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
