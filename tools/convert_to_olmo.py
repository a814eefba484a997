"""Export an olmo_jax checkpoint as an OLMo-native unsharded checkpoint, for OLMo's own tools and trainer.

    python tools/convert_to_olmo.py --checkpoint runs/olmo-1b --output runs/olmo-1b-native

writes `<output>/stepN-unsharded/` with model.pt, optim.pt (AdamW's moments and step), train.pt (step, epoch, data
position) and config.yaml, which `olmo.model.OLMo.from_checkpoint`, OLMo's `scripts/convert_olmo_to_hf.py` and
OLMo's trainer (`--load_path`) read. `--checkpoint` is a run directory (its newest complete checkpoint), its
`checkpoints/` folder or one step folder. Needs PyTorch (pip install -e ".[olmo]"). docs/olmo-exchange.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from olmo_jax import cli
from olmo_jax.config import config_dict
from olmo_jax.train.exchange import export_to_olmo

DEFAULTS = Path(__file__).resolve().parents[1] / "configs" / "1b.py"  # for keys older checkpoints lack


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/convert_to_olmo.py", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoints/ folder or step folder")
    parser.add_argument("--output", required=True, help="folder to write stepN-unsharded/ into")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, _ = parser().parse_with_overrides(argv)
    out, note = export_to_olmo(args.checkpoint, args.output, config_dict(DEFAULTS).to_dict())
    print(f"wrote {out}" + (f" ({note})" if note else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
