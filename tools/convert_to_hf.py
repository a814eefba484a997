"""Export an olmo_jax checkpoint to a Hugging Face `OlmoForCausalLM` directory.

    python tools/convert_to_hf.py --checkpoint runs/tiny --output hf/tiny [--tokenizer NAME_OR_FILE | --no-tokenizer]

`--checkpoint` is a run directory (its newest complete checkpoint), its `checkpoints/` folder or one step folder.
The tokenizer files written beside the weights default to the tokenizer the run was trained with (`tokenizer`).
The conversion is olmo_jax.train.checkpoint.load_params, then olmo_jax.model.hf.save_hf.
"""

from __future__ import annotations

import sys

from olmo_jax import cli
from olmo_jax.data.tokenizer import tokenizer_path
from olmo_jax.model.hf import save_hf
from olmo_jax.train.checkpoint import load_params, tokenizer_of


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/convert_to_hf.py", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoints/ folder or step folder")
    parser.add_argument("--output", required=True, help="HF directory to write")
    parser.add_argument("--tokenizer", help="tokenizer.json or known name to include (default: the run's)")
    parser.add_argument("--no-tokenizer", action="store_true", help="write the weights and config only")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, _ = parser().parse_with_overrides(argv)
    config, params, meta = load_params(args.checkpoint)
    tokenizer = None
    if not args.no_tokenizer:
        name = args.tokenizer or tokenizer_of(meta)
        tokenizer = tokenizer_path(name) if name else None
    save_hf(config, params, args.output, tokenizer=tokenizer)
    print(f"wrote {args.output} ({config.num_params():,} parameters, step {meta.get('step', '?')})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
