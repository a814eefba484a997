"""configs/tiny.py shrunk for tests: a 256-token vocabulary and d_model 32, so a step takes milliseconds on a CPU."""

import importlib.util
from pathlib import Path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    path = Path(__file__).parents[2] / "configs" / "tiny.py"
    spec = importlib.util.spec_from_file_location("olmo_jax_config_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.run_name = "micro"
    c.max_duration = 12
    c.global_train_batch_size = 8
    c.device_train_microbatch_size = 4
    c.save_interval = 4
    c.save_num_checkpoints_to_keep = 5
    c.console_log_interval = 1
    c.tensorboard = False
    c.data.stdlib_corpus = False
    c.evaluators = ()
    c.model.d_model = 32
    c.model.n_heads = 2
    c.model.n_layers = 2
    c.model.mlp_ratio = 4
    c.model.max_sequence_length = 16
    c.model.vocab_size = 250
    c.model.embedding_size = 256
    c.model.eos_token_id = 249
    c.scheduler.t_warmup = 3
    return c
