"""Import a Hugging Face `OlmoForCausalLM` directory (config.json + safetensors) as an olmo_jax checkpoint.

    python tools/convert_from_hf.py --hf path/to/OLMo-1B-hf --output runs/olmo-1b-hf

The result is a weights-only checkpoint: train from it with `--config.load_path=<output>`, evaluate or generate
with `--checkpoint <output>`, or convert it back with tools/convert_to_hf.py. The conversion is
olmo_jax.model.hf.load_hf, then olmo_jax.train.checkpoint.save_params.
"""

from __future__ import annotations

import sys

from olmo_jax import cli
from olmo_jax.model.hf import load_hf
from olmo_jax.train.checkpoint import save_params


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/convert_from_hf.py", description=__doc__)
    parser.add_argument("--hf", required=True, help="HF model directory (config.json + *.safetensors)")
    parser.add_argument("--output", required=True, help="run directory to write the checkpoint into")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, _ = parser().parse_with_overrides(argv)
    config, params = load_hf(args.hf)
    step_dir = save_params(args.output, config, params, source=f"hf:{args.hf}")
    print(f"wrote {step_dir} ({config.num_params():,} parameters)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
