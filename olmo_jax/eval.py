"""Evaluate a checkpoint or a Hugging Face OLMo model on OLMo's downstream tasks and held-out perplexity sets.

    python -m olmo_jax.eval --checkpoint runs/tiny [--tasks hellaswag,winogrande] [--limit 100] [--output r.json]
    python -m olmo_jax.eval --hf path/to/OLMo-1B-hf --tasks all --dtype bfloat16
    python -m olmo_jax.eval --checkpoint runs/tiny --tasks none --perplexity c4_en=val.npy

Prints a table (task, metric, score, examples) and, with --output, writes the results as JSON. Default tasks: the
reference recipe's six (hellaswag, winogrande, sciq, copa, arc_easy, openbook_qa); `all` runs OLMo's 13.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from olmo_jax.assets import AssetError
from olmo_jax.checkpoint import load_params, tokenizer_of
from olmo_jax.evaluate import EvaluatorConfig, Evaluators, Result
from olmo_jax.hf import load_hf
from olmo_jax.tasks import RECIPE_TASKS, TASKS
from olmo_jax.tokenizer import Tokenizer


def parse_tasks(text: str) -> list[str]:
    if text == "all":
        return list(TASKS)
    if text == "none":
        return []
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown} in --tasks; the tasks are {sorted(TASKS)} (or 'all', 'none').")
    return tasks


def parse_perplexity(items: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    sets = []
    for item in items:
        label, sep, files = item.partition("=")
        if not sep or not label or not files:
            raise ValueError(f"--perplexity {item!r} is not of the form LABEL=FILE[,FILE...].")
        sets.append((label, tuple(files.split(","))))
    return sets


def format_table(results: Sequence[Result]) -> str:
    """task | metric | score | examples; accuracies and F1 as percentages, losses and perplexities as numbers."""
    lines = [f"{'task':<16} {'metric':<17} {'score':>10} {'examples':>9}"]
    for r in results:
        value = f"{r.value:.4f}" if r.metric in ("CrossEntropyLoss", "Perplexity") else f"{100 * r.value:.2f}%"
        lines.append(f"{r.label:<16} {r.metric:<17} {value:>10} {r.examples:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run directory, its checkpoints/ folder or one step folder")
    source.add_argument("--hf", help="Hugging Face OLMo directory (config.json + safetensors)")
    parser.add_argument("--tasks", default=",".join(RECIPE_TASKS), help="comma-separated task labels, 'all' or 'none'")
    parser.add_argument("--perplexity", action="append", default=[], metavar="LABEL=FILE[,FILE]",
                        help="a held-out set of token files (training format); repeatable")
    parser.add_argument("--memmap_dtype", default="uint16", help="dtype of the perplexity token files")
    parser.add_argument("--limit", type=int, help="at most this many examples per task / instances per set")
    parser.add_argument("--batch_size", type=int, default=8, help="rows per forward pass (OLMo: 8)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument("--tokenizer", help="tokenizer.json or known name (default: the HF dir's, else OLMo-1B's)")
    parser.add_argument("--output", help="write the results here as JSON")
    args = parser.parse_args(argv)
    try:
        configs = [EvaluatorConfig(label, limit=args.limit) for label in parse_tasks(args.tasks)]
        configs += [EvaluatorConfig(label, "perplexity", files, args.limit)
                    for label, files in parse_perplexity(args.perplexity)]
        if not configs:
            raise ValueError("Nothing to evaluate: give --tasks and/or --perplexity.")
        if args.hf:
            model_config, params = load_hf(args.hf, compute_dtype=args.dtype)
            tokenizer_id = args.tokenizer or (args.hf if (Path(args.hf) / "tokenizer.json").exists() else None)
        else:
            model_config, params, meta = load_params(args.checkpoint, compute_dtype=args.dtype)
            tokenizer_id = args.tokenizer or tokenizer_of(meta)
        needs_tokenizer = any(c.type == "downstream" for c in configs)
        tokenizer = None
        if needs_tokenizer:
            tokenizer = Tokenizer.load(tokenizer_id, model_config.eos_token_id, model_config.pad_token_id)
        evaluators = Evaluators(configs, model_config, tokenizer, args.batch_size, args.memmap_dtype)
        start = time.perf_counter()
        results = evaluators.results(params)
        seconds = time.perf_counter() - start
    except (ValueError, AssetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_table(results))
    print(f"({seconds:.1f}s, {model_config.num_params():,} parameters, {model_config.compute_dtype})")
    if args.output:
        report = {
            "model": args.hf or args.checkpoint,
            "results": [{"task": r.label, "metric": r.metric, "score": r.value, "examples": r.examples, "key": r.key}
                        for r in results],
            "metrics": {r.key: r.value for r in results},
            "limit": args.limit,
            "dtype": args.dtype,
            "seconds": seconds,
        }
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
