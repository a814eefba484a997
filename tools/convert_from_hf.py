"""Import a Hugging Face `OlmoForCausalLM` directory (config.json + safetensors) as an olmo_jax checkpoint.

    python tools/convert_from_hf.py --hf path/to/OLMo-1B-hf --output runs/olmo-1b-hf

The result is a weights-only checkpoint: train from it with `--config.load_path=<output>`, evaluate or generate
with `--checkpoint <output>`, or convert it back with tools/convert_to_hf.py.
"""

from __future__ import annotations

import argparse
import sys

from olmo_jax.checkpoint import CheckpointError, save_params
from olmo_jax.hf import HFConversionError, load_hf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="HF model directory (config.json + *.safetensors)")
    parser.add_argument("--output", required=True, help="run directory to write the checkpoint into")
    args = parser.parse_args(argv)
    try:
        config, params = load_hf(args.hf)
        step_dir = save_params(args.output, config, params, source=f"hf:{args.hf}")
    except (CheckpointError, HFConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {step_dir} ({config.num_params():,} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
