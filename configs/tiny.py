"""A tiny member of the OLMo family for laptops and CI: the 1B recipe's code paths at a size a 2-core CPU trains in
minutes. On CPU the 50,304-row embedding and output projection dominate the cost, so the blocks are kept small and
the sequence short. Everything not set here is as in configs/1b.py."""

import importlib.util
from pathlib import Path

import ml_collections


def _base() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("olmo_jax_config_1b", Path(__file__).with_name("1b.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    c = _base()
    c.run_name = "olmo-tiny"
    c.precision = "fp32"  # CPU: fp32 is faster than emulated bf16 there
    c.max_duration = 150  # the loss passes the corpus's unigram entropy by step ~30; 150 steps take ~5 min
    c.global_train_batch_size = 16
    c.device_train_microbatch_size = 8
    c.save_folder = "runs/tiny"
    c.save_interval = 50
    c.save_num_checkpoints_to_keep = 2
    c.console_log_interval = 10
    c.eval_interval = 75
    # The recipe's six tasks on their first 100 examples each, so an in-loop evaluation takes seconds
    # on a CPU (the full sets take minutes: `python -m olmo_jax.eval`).
    c.evaluators = (
        *(dict(e, limit=100) for e in c.evaluators),
        # Perplexity on the held-out 5% of the quickstart corpus (olmo_jax/data/quickstart.py writes heldout.npy).
        dict(label="stdlib_heldout", type="perplexity", paths=("data/stdlib/heldout.npy",), limit=256),
    )

    # The quickstart corpus: built from this Python's standard library on the first run (olmo_jax/data/quickstart.py).
    c.data.paths = ("data/stdlib/train.npy",)
    c.data.stdlib_corpus = True

    c.model.d_model = 128
    c.model.n_heads = 4
    c.model.n_layers = 4
    c.model.mlp_ratio = 8
    c.model.max_sequence_length = 128

    c.optimizer.learning_rate = 3e-3
    c.scheduler.t_warmup = 15
    return c
