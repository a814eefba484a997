"""`python -m olmo_jax.train --config=configs/tiny.py [--config.key=value ...]`: train, or resume a run.

The config file is an ml_collections file (locked: a misspelt key is an error); every key can be overridden with a
`--config.` prefix, e.g. the reference recipe's `--config.scheduler.t_warmup=500`. Rerunning a command whose
save_folder holds checkpoints resumes from the newest complete one.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from olmo_jax.assets import AssetError
from olmo_jax.checkpoint import CheckpointError
from olmo_jax.config import ConfigError, TrainConfig
from olmo_jax.data import DataError
from olmo_jax.hf import HFConversionError
from olmo_jax.tasks import TaskDataError


def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS) -> flags.FlagHolder:
    """`--config=<file>` plus its `--config.key=value` overrides, locked so that a misspelt key is an error."""
    return config_flags.DEFINE_config_file(
        "config", "configs/tiny.py", "Training config file.", flag_values=flag_values, lock_config=True
    )


_CONFIG = define_config_flag()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; overrides look like --config.key=value.")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax and XLA log every step of their work at INFO
    from olmo_jax.distributed import DistributedError, initialize
    from olmo_jax.trainer import TrainingError, train  # after flag parsing: `--help` stays fast
    from olmo_jax.xla_flags import apply_recommended_flags

    apply_recommended_flags()  # GPU only, before JAX starts its backend; OLMO_JAX_XLA_FLAGS=0 turns it off
    try:
        config = TrainConfig.from_dict(_CONFIG.value)
        initialize(config.distributed)  # before any other JAX call
        train(config)
    except (ConfigError, DataError, CheckpointError, TrainingError, HFConversionError, AssetError, TaskDataError,
            DistributedError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
