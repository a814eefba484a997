"""Evaluate a checkpoint or a Hugging Face OLMo model on OLMo's downstream tasks and held-out perplexity sets.

    python -m olmo_jax.eval --checkpoint runs/tiny [--tasks hellaswag,winogrande] [--limit 100] [--output r.json]
    python -m olmo_jax.eval --hf path/to/OLMo-1B-hf --tasks all --dtype bfloat16 [--attention_impl auto]
    python -m olmo_jax.eval --checkpoint runs/tiny --tasks none --perplexity c4_en=val.npy

Prints a table (task, metric, score, examples) and, with --output, writes the results as JSON. Default tasks: the
reference recipe's six (hellaswag, winogrande, sciq, copa, arc_easy, openbook_qa); `all` runs OLMo's 13. How the
model runs (`--dtype`, `--attention_impl`) is this command's choice, whatever the checkpoint was trained with.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from olmo_jax import cli
from olmo_jax.errors import UsageError
from olmo_jax.eval.config import EvaluatorConfig
from olmo_jax.eval.tasks import RECIPE_TASKS, TASKS
from olmo_jax.model.config import AttentionImpl, ComputeDtype, RunOptions


def parse_tasks(text: str) -> list[str]:
    if text == "all":
        return list(TASKS)
    if text == "none":
        return []
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"Unknown task(s) {unknown} in --tasks; the tasks are {sorted(TASKS)} (or 'all', 'none').")
    return tasks


def parse_perplexity(items: Sequence[str]) -> list[tuple[str, tuple[str, ...]]]:
    sets = []
    for item in items:
        label, sep, files = item.partition("=")
        if not sep or not label or not files:
            raise UsageError(f"--perplexity {item!r} is not of the form LABEL=FILE[,FILE...].")
        sets.append((label, tuple(files.split(","))))
    return sets


def format_table(results: Sequence) -> str:
    """task | metric | score | examples; accuracies and F1 as percentages, losses and perplexities as numbers."""
    lines = [f"{'task':<16} {'metric':<17} {'score':>10} {'examples':>9}"]
    for r in results:
        value = f"{r.value:.4f}" if r.metric in ("CrossEntropyLoss", "Perplexity") else f"{100 * r.value:.2f}%"
        lines.append(f"{r.label:<16} {r.metric:<17} {value:>10} {r.examples:>9}")
    return "\n".join(lines)


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m olmo_jax.eval", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run directory, its checkpoints/ folder or one step folder")
    source.add_argument("--hf", help="Hugging Face OLMo directory (config.json + safetensors)")
    parser.add_argument("--tasks", default=",".join(RECIPE_TASKS), help="comma-separated task labels, 'all' or 'none'")
    parser.add_argument("--perplexity", action="append", default=[], metavar="LABEL=FILE[,FILE]",
                        help="a held-out set of token files (training format); repeatable")
    parser.add_argument("--memmap_dtype", default="uint16", help="dtype of the perplexity token files")
    parser.add_argument("--limit", type=int, help="at most this many examples per task / instances per set")
    parser.add_argument("--batch_size", type=int, default=8, help="rows per forward pass (OLMo: 8)")
    parser.add_argument("--dtype", choices=ComputeDtype.__args__, default="float32", help="compute dtype")
    parser.add_argument("--attention_impl", choices=AttentionImpl.__args__, default="auto",
                        help="auto: cuDNN flash attention on a GPU in bf16, XLA elsewhere")
    parser.add_argument("--tokenizer", help="tokenizer.json or known name (default: the HF dir's, else the run's)")
    parser.add_argument("--output", help="write the results here as JSON")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, _ = parser().parse_with_overrides(argv)
    configs = [EvaluatorConfig(label, limit=args.limit) for label in parse_tasks(args.tasks)]
    configs += [EvaluatorConfig(label, "perplexity", files, args.limit)
                for label, files in parse_perplexity(args.perplexity)]
    if not configs:
        raise UsageError("Nothing to evaluate: give --tasks and/or --perplexity.")
    if args.output and Path(args.output).exists():
        raise UsageError(f"--output {args.output} already exists; olmo_jax never replaces a file: remove it or choose "
                         "another.")
    options = RunOptions(dtype=args.dtype, attention_impl=args.attention_impl)
    from olmo_jax.data.tokenizer import Tokenizer
    from olmo_jax.eval.evaluators import Evaluators
    from olmo_jax.model.attention import attention_impl

    attention_impl(options)  # an impossible choice fails before the model is loaded
    if args.hf:
        from olmo_jax.model.hf import load_hf

        model_config, params = load_hf(args.hf)
        tokenizer_id = args.tokenizer or (args.hf if (Path(args.hf) / "tokenizer.json").exists() else None)
    else:
        from olmo_jax.train.checkpoint import load_params, tokenizer_of

        model_config, params, meta = load_params(args.checkpoint)
        tokenizer_id = args.tokenizer or tokenizer_of(meta)
    tokenizer = None
    if any(c.type == "downstream" for c in configs):
        tokenizer = Tokenizer.load(tokenizer_id, model_config.eos_token_id, model_config.pad_token_id)
    evaluators = Evaluators(configs, model_config, tokenizer, args.batch_size, args.memmap_dtype, options)
    start = time.perf_counter()
    results = evaluators.results(params)
    seconds = time.perf_counter() - start
    print(format_table(results))
    print(f"({seconds:.1f}s, {model_config.num_params():,} parameters, {options.dtype}, attention "
          f"{attention_impl(options)})")
    if args.output:
        report = {
            "model": args.hf or args.checkpoint,
            "results": [{"task": r.label, "metric": r.metric, "score": r.value, "examples": r.examples, "key": r.key}
                        for r in results],
            "metrics": {r.key: r.value for r in results},
            "limit": args.limit,
            "dtype": args.dtype,
            "attention_impl": attention_impl(options),
            "seconds": seconds,
        }
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
