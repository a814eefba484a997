"""`python -m olmo_jax.train --config=configs/tiny.py [--config.key=value ...]`: train, or resume a run.

The config file is an ml_collections file; every key can be overridden with a `--config.` prefix, e.g. the
reference recipe's `--config.scheduler.t_warmup=500` (a misspelt key is an error that suggests the right one). Every
key is listed in docs/configuration.md. Rerunning a command whose save_folder holds checkpoints resumes from the
newest complete one.
"""

from __future__ import annotations

import sys

from olmo_jax import cli
from olmo_jax.config import TrainConfig, load_config

DEFAULT_CONFIG = "configs/tiny.py"


def parser() -> cli.ArgumentParser:
    return cli.ArgumentParser(prog="python -m olmo_jax.train", description=__doc__, takes_config=True,
                              config_default=DEFAULT_CONFIG)


def parse(argv: list[str] | None = None) -> TrainConfig:
    """The run's config from this command's arguments (what `run` trains with)."""
    args, overrides = parser().parse_with_overrides(argv)
    return load_config(args.config, overrides)


def run(argv: list[str] | None = None) -> int:
    config = parse(argv)  # before JAX starts anything: flags and config errors are reported at once
    from olmo_jax.parallel.xla_flags import apply_recommended_flags

    apply_recommended_flags()  # GPU only, before JAX starts its backend; OLMO_JAX_XLA_FLAGS=0 turns it off
    import jax

    from olmo_jax.parallel.distributed import finish, initialize
    from olmo_jax.train.trainer import train

    initialize(config.distributed)  # before any other JAX call
    failed = True
    try:
        config.mesh.shape(jax.device_count())  # a mesh that cannot fit fails before anything is built
        if config.data.stdlib_corpus:
            build_quickstart_corpus(config)
        train(config)
        failed = False
    finally:
        finish(config.distributed, failed)  # multi-process: leave together, process 0 last
    return 0


def build_quickstart_corpus(config: TrainConfig) -> None:
    """configs/tiny.py's corpus, at its own path only: process 0 builds what is missing (never replacing a file), the
    others wait; then its unigram entropy, the loss a model reaches by predicting token frequencies alone, is
    printed as a yardstick."""
    import jax
    from jax.experimental import multihost_utils

    from olmo_jax.data.quickstart import TRAIN_PATH, ensure_stdlib_corpus, is_quickstart_path, unigram_entropy

    if len(config.data.paths) != 1 or not is_quickstart_path(config.data.paths[0]):
        if jax.process_index() == 0:
            print(f"data.stdlib_corpus is set but data.paths is not the quickstart's ({TRAIN_PATH}): nothing is built "
                  "(set --config.data.stdlib_corpus=False to silence this).", flush=True)
        return
    if jax.process_index() == 0:
        ensure_stdlib_corpus(config.data.paths[0], config.tokenizer)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("stdlib corpus built")
    if jax.process_index() == 0:
        entropy = unigram_entropy(config.data.paths[0], config.data.memmap_dtype)
        print(f"  corpus: unigram entropy {entropy:.3f} nats (a loss below it means the model uses context)",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
