"""Export an olmo_jax checkpoint to a Hugging Face `OlmoForCausalLM` directory.

    python tools/convert_to_hf.py --checkpoint runs/tiny --output hf/tiny [--tokenizer NAME_OR_FILE | --no-tokenizer]

`--checkpoint` is a run directory (its newest complete checkpoint), its `checkpoints/` folder or one step folder.
The tokenizer files written beside the weights default to the tokenizer the run was trained with (`tokenizer`).
"""

from __future__ import annotations

import argparse
import sys

from olmo_jax.assets import AssetError
from olmo_jax.checkpoint import CheckpointError, load_params, tokenizer_of
from olmo_jax.hf import HFConversionError, save_hf
from olmo_jax.tokenizer import tokenizer_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoints/ folder or step folder")
    parser.add_argument("--output", required=True, help="HF directory to write")
    parser.add_argument("--tokenizer", help="tokenizer.json or known name to include (default: the run's)")
    parser.add_argument("--no-tokenizer", action="store_true", help="write the weights and config only")
    args = parser.parse_args(argv)
    try:
        config, params, meta = load_params(args.checkpoint)
        tokenizer = None
        if not args.no_tokenizer:
            name = args.tokenizer or tokenizer_of(meta)
            tokenizer = tokenizer_path(name) if name else None
        save_hf(config, params, args.output, tokenizer=tokenizer)
    except (AssetError, CheckpointError, HFConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({config.num_params():,} parameters, step {meta.get('step', '?')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
