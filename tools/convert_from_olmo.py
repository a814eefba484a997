"""Import an OLMo-native unsharded checkpoint (`stepN-unsharded/`, a folder or an http(s)/gs/s3 URL) as an olmo_jax
run directory holding its full state: weights, AdamW moments and step.

    python tools/convert_from_olmo.py --checkpoint runs/olmo/step1000-unsharded --output runs/from-olmo

Continue it with `--config=configs/olmo_yaml.py:<checkpoint> --config.load_path=<output>` (or point load_path at
the OLMo folder itself, which also checks its data position), evaluate or generate with `--checkpoint <output>`, or
convert it with tools/convert_to_hf.py. Needs PyTorch for .pt files (pip install -e ".[olmo]").
docs/olmo-exchange.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from olmo_jax import cli
from olmo_jax.config import load_config
from olmo_jax.train.exchange import import_from_olmo, local_checkpoint

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "olmo_yaml.py"


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/convert_from_olmo.py", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="OLMo stepN-unsharded folder or URL")
    parser.add_argument("--output", required=True, help="run directory to write the checkpoint into")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, _ = parser().parse_with_overrides(argv)
    path = local_checkpoint(args.checkpoint)
    config = load_config(f"{CONFIG}:{path}", [f"save_folder={Path(args.output).absolute()}"])
    step_dir, step = import_from_olmo(path, args.output, config)
    print(f"wrote {step_dir} (step {step}, {config.model.num_params():,} parameters, "
          f"loss_normalization={config.loss_normalization})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
