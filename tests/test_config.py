"""Config files → typed configs: the shipped configs, overrides, and clear errors for bad values."""

from __future__ import annotations

import pytest
from conftest import ROOT, run_python

from olmo_jax.config import ConfigError, TrainConfig, load_config, load_config_file


def test_1b_config_is_the_reference_recipe() -> None:
    c = load_config(ROOT / "configs/1b.py")
    m = c.model
    assert (m.n_layers, m.d_model, m.n_heads, m.mlp_ratio, m.max_sequence_length) == (16, 2048, 16, 8, 2048)
    assert (m.vocab_size, m.embedding_size, m.weight_tying, m.init_fn) == (50280, 50304, True, "mitchell")
    assert m.num_params() == 1_176_764_416
    assert m.compute_dtype == "bfloat16"
    o, s = c.optimizer, c.scheduler
    assert (o.learning_rate, o.betas, o.eps, o.weight_decay) == (4e-4, (0.9, 0.95), 1e-5, 0.1)
    assert (s.name, s.t_warmup, s.alpha_f) == ("cosine_with_warmup", 500, 0.1)
    assert (c.global_train_batch_size, c.device_train_microbatch_size, c.max_duration) == (64, 8, 7630)
    assert (c.save_interval, c.seed) == (1000, 6198)


def test_tiny_config_is_fp32_with_the_real_vocabulary() -> None:
    c = load_config(ROOT / "configs/tiny.py")
    assert c.model.compute_dtype == "float32"
    assert c.model.vocab_size == 50280 and c.model.embedding_size == 50304


def test_overrides_carry_the_recipes_flags() -> None:
    c = load_config(ROOT / "configs/1b.py", [
        "--config.max_duration=100", "--config.scheduler.t_warmup=10", "optimizer.betas=(0.9, 0.99)",
        "model.clip_qkv=8.0", "stop_at=5",
    ])
    assert (c.max_duration, c.scheduler.t_warmup, c.optimizer.betas, c.model.clip_qkv, c.stop_at) == (
        100, 10, (0.9, 0.99), 8.0, 5)


def test_misspelt_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"no config key 'scheduler\.t_warmpu'"):
        load_config(ROOT / "configs/1b.py", ["scheduler.t_warmpu=3"])


@pytest.mark.parametrize(("override", "message"), [
    ("global_train_batch_size=60", "not a multiple of device_train_microbatch_size=8"),
    ("precision=fp16", "precision='fp16'"),
    ("model.d_model=2050", "divisible by n_heads"),
    ("stop_at=9000", "stop_at=9000"),
    ("optimizer.eps=0.0", "eps=0.0"),
    ("scheduler.name=cosine", "scheduler.name='cosine'"),
])
def test_bad_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(ROOT / "configs/1b.py", [override])


def test_unknown_keys_in_a_dict_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"config\.model\.d_modle"):
        TrainConfig.from_dict({"model": {"d_modle": 3}})


def test_missing_config_file_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file("configs/nope.py")


def test_cli_rejects_a_misspelt_flag() -> None:
    result = run_python("-m", "olmo_jax.train", "--config=configs/tiny.py", "--config.model.d_modle=3")
    assert result.returncode != 0
    assert 'Did you mean "d_model"' in result.stderr


def test_evaluators_are_configured_as_in_the_recipe() -> None:
    c = load_config(ROOT / "configs/1b.py")
    assert (c.eval_interval, c.device_eval_batch_size, c.tokenizer) == (2000, 8, "allenai_gpt-neox-olmo-dolma-v1_5")
    recipe = ("hellaswag", "winogrande", "sciq", "copa", "arc_easy", "openbook_qa")
    assert [(e.label, e.type, e.limit) for e in c.evaluators] == [(t, "downstream", None) for t in recipe]
    tiny = load_config(ROOT / "configs/tiny.py")
    downstream = [e for e in tiny.evaluators if e.type == "downstream"]
    assert [e.label for e in downstream] == list(recipe) and {e.limit for e in downstream} == {100}
    assert [e.label for e in tiny.evaluators if e.type == "perplexity"] == ["stdlib_heldout"]
    assert tiny.eval_interval < tiny.max_duration


def test_evaluators_from_dicts_and_their_errors() -> None:
    c = TrainConfig.from_dict({"evaluators": [{"label": "c4", "type": "perplexity", "paths": ["val.npy"]}]})
    assert c.evaluators[0].paths == ("val.npy",)
    with pytest.raises(ConfigError, match=r"config\.evaluators\[0\]: .*needs paths"):
        TrainConfig.from_dict({"evaluators": [{"label": "c4", "type": "perplexity"}]})
    with pytest.raises(ConfigError, match=r"config\.evaluators\[1\]: Unknown downstream task 'copaa'"):
        TrainConfig.from_dict({"evaluators": [{"label": "copa"}, {"label": "copaa"}]})
    with pytest.raises(ConfigError, match="eval_interval=0 must be positive"):
        TrainConfig.from_dict({"eval_interval": 0})
