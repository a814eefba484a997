"""Config files → typed configs: the shipped configs, one parse for every entry point (overrides, repeated tuple
flags, literals, None defaults, "did you mean"), one source of defaults, one precision field, and clear errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
from conftest import ROOT, run_python

from olmo_jax.config import TrainConfig, config_dict, load_config
from olmo_jax.data.config import DataConfig
from olmo_jax.errors import ConfigError
from olmo_jax.eval.config import EvaluatorConfig
from olmo_jax.model.config import ModelConfig, RunOptions
from olmo_jax.parallel.config import DistributedConfig, MeshConfig
from olmo_jax.train.config import OptimizerConfig, SchedulerConfig, WandbConfig

RECIPE = ROOT / "configs" / "1b.py"


def test_1b_config_is_the_reference_recipe() -> None:
    c = load_config(RECIPE)
    m = c.model
    assert (m.n_layers, m.d_model, m.n_heads, m.mlp_ratio, m.max_sequence_length) == (16, 2048, 16, 8, 2048)
    assert (m.vocab_size, m.embedding_size, m.weight_tying, m.init_fn) == (50280, 50304, True, "mitchell")
    assert m.num_params() == 1_176_764_416
    assert c.run == RunOptions(dtype="bfloat16", attention_impl="auto", remat="none") and c.precision == "amp_bf16"
    o, s = c.optimizer, c.scheduler
    assert (o.learning_rate, o.betas, o.eps, o.weight_decay) == (4e-4, (0.9, 0.95), 1e-5, 0.1)
    assert (s.name, s.t_warmup, s.alpha_f) == ("cosine_with_warmup", 500, 0.1)
    assert (c.global_train_batch_size, c.device_train_microbatch_size, c.max_duration) == (64, 8, 7630)
    assert (c.save_interval, c.seed) == (1000, 6198)


def test_tiny_config_is_fp32_with_the_real_vocabulary() -> None:
    c = load_config(ROOT / "configs/tiny.py")
    assert c.run.dtype == "float32" and c.precision == "fp32"
    assert c.model.vocab_size == 50280 and c.model.embedding_size == 50304


def test_overrides_carry_the_recipes_flags() -> None:
    c = load_config(RECIPE, [
        "--config.max_duration=100", "--config.scheduler.t_warmup=10", "optimizer.betas=(0.9, 0.99)",
        "model.clip_qkv=8.0", "stop_at=5", "--config.model.remat=full", "--config.precision=fp32",
    ])
    assert (c.max_duration, c.scheduler.t_warmup, c.optimizer.betas, c.model.clip_qkv, c.stop_at) == (
        100, 10, (0.9, 0.99), 8.0, 5)
    assert c.run == RunOptions(dtype="float32", attention_impl="auto", remat="full")


def test_repeated_tuple_flags_collect_every_value() -> None:
    """The hand-written override parser kept only the last: `--config.data.paths=a --config.data.paths=b` → (b,)."""
    c = load_config(RECIPE, ["--config.data.paths=a.npy", "--config.data.paths=b.npy"])
    assert c.data.paths == ("a.npy", "b.npy")
    assert load_config(RECIPE, ["--config.data.paths=('a.npy', 'b.npy')"]).data.paths == ("a.npy", "b.npy")
    assert load_config(RECIPE, ["--config.distributed.local_device_ids=(0,1)"]).distributed.local_device_ids == (0, 1)


def test_the_train_command_and_a_tool_build_the_same_config() -> None:
    """One parse for every entry point: the same argv gives equal TrainConfigs through `python -m olmo_jax.train`
    and through tools/inspect_data.py, repeated tuple flags and literals included."""
    from olmo_jax.train.__main__ import parse as train_parse

    spec = importlib.util.spec_from_file_location("inspect_data_tool", ROOT / "tools" / "inspect_data.py")
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool
    spec.loader.exec_module(tool)
    argv = [f"--config={RECIPE}", "--config.data.paths=a.npy", "--config.data.paths=b.npy", "--config.stop_at=7",
            "--config.optimizer.betas=(0.9, 0.99)", "--config.model.remat=save_matmuls"]
    args, overrides = tool.parser().parse_with_overrides([*argv, "--step", "3"])
    from_tool = load_config(args.config, overrides)
    from_train = train_parse(argv)
    assert from_tool == from_train
    assert from_train.data.paths == ("a.npy", "b.npy") and from_train.stop_at == 7


@pytest.mark.parametrize(("override", "message"), [
    ("--config.scheduler.t_warmpu=3",
     r"--config\.scheduler\.t_warmpu=3: no config key scheduler\.t_warmpu\. Did you mean scheduler\.t_warmup\?"),
    ("--config.model.d_modle=3", r"no config key model\.d_modle\. Did you mean model\.d_model\?"),
    ("--config.zzz.y=3", r"no config key zzz\.y"),
    ("--config.max_duration=abc", r"--config\.max_duration=abc: invalid literal for int"),
    ("--confg.max_duration=3", r"confg\.max_duration: not a config flag"),
])
def test_misspelt_keys_and_bad_values_are_config_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPE, [override])


@pytest.mark.parametrize(("override", "message"), [
    ("global_train_batch_size=60", "not a multiple of device_train_microbatch_size=8"),
    ("precision=fp16", "precision='fp16'"),
    ("model.d_model=2050", "divisible by n_heads"),
    ("model.remat=some", "remat='some'"),
    ("stop_at=9000", "stop_at=9000"),
    ("optimizer.eps=0.0", "eps=0.0"),
    ("scheduler.name=cosine", "scheduler.name='cosine'"),
    ("mesh.fsdp=0", "mesh.fsdp=0"),
    ("model.eos_token_id=60000", r"eos_token_id=60000 must be in \[0, vocab_size=50280\)"),
])
def test_bad_values_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(RECIPE, [override])


def test_defaults_live_in_configs_1b_alone() -> None:
    """No config dataclass carries a default of its own (they used to differ from configs/1b.py on ten keys), so a
    config file that lacks a key is an error naming it; EvaluatorConfig's defaults describe an entry's optional
    fields, and RunOptions' are the library's plain way to run a model, not a config file's."""
    for cls in (TrainConfig, ModelConfig, OptimizerConfig, SchedulerConfig, DataConfig, MeshConfig,
                DistributedConfig, WandbConfig):
        defaults = [f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
        assert defaults == [], f"{cls.__name__} has defaults for {defaults}"
    assert {f.name for f in dataclasses.fields(EvaluatorConfig) if f.default is dataclasses.MISSING} == {"label"}
    values = config_dict(RECIPE).to_dict()
    del values["optimizer"]["eps"]
    with pytest.raises(ConfigError, match=r"Missing key\(s\) \['config\.optimizer\.eps'\].*configs/1b\.py"):
        TrainConfig.from_dict(values)
    del values["precision"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['precision'\]"):
        TrainConfig.from_dict(values)


def test_one_field_for_precision() -> None:
    """`precision` is OLMo's name for the run's compute dtype, RunOptions.dtype: the model has no dtype field."""
    c = load_config(RECIPE, ["--config.precision=fp32"])
    assert c.run.dtype == "float32" and c.precision == "fp32"
    assert "compute_dtype" not in {f.name for f in dataclasses.fields(ModelConfig)}
    assert "precision" not in {f.name for f in dataclasses.fields(TrainConfig)}


def test_to_dict_is_the_config_files_layout() -> None:
    c = load_config(ROOT / "configs/tiny.py")
    assert TrainConfig.from_dict(c.to_dict()) == c
    layout = config_dict(ROOT / "configs/tiny.py").to_dict()

    def keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return out

    assert keys(c.to_dict()) == keys(layout)


def test_unknown_keys_in_a_dict_are_rejected() -> None:
    values = config_dict(RECIPE).to_dict()
    values["model"]["d_modle"] = 3
    with pytest.raises(ConfigError, match=r"config\.model\.d_modle"):
        TrainConfig.from_dict(values)


def test_missing_or_broken_config_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.py")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(ConfigError, match=r"could not be loaded \(SyntaxError"):
        load_config(broken)


def test_cli_rejects_a_misspelt_flag_with_one_line() -> None:
    result = run_python("-m", "olmo_jax.train", "--config=configs/tiny.py", "--config.model.d_modle=3")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --config.model.d_modle=3: no config key model.d_modle. Did you mean "
                                    "model.d_model?")


def test_evaluators_are_configured_as_in_the_recipe() -> None:
    c = load_config(RECIPE)
    assert (c.eval_interval, c.device_eval_batch_size, c.tokenizer) == (2000, 8, "allenai_gpt-neox-olmo-dolma-v1_5")
    recipe = ("hellaswag", "winogrande", "sciq", "copa", "arc_easy", "openbook_qa")
    assert [(e.label, e.type, e.limit) for e in c.evaluators] == [(t, "downstream", None) for t in recipe]
    tiny = load_config(ROOT / "configs/tiny.py")
    downstream = [e for e in tiny.evaluators if e.type == "downstream"]
    assert [e.label for e in downstream] == list(recipe) and {e.limit for e in downstream} == {100}
    assert [e.label for e in tiny.evaluators if e.type == "perplexity"] == ["stdlib_heldout"]
    assert tiny.eval_interval < tiny.max_duration


def test_evaluators_from_dicts_and_their_errors() -> None:
    values = config_dict(RECIPE).to_dict()

    def with_evaluators(*evaluators: dict) -> TrainConfig:
        return TrainConfig.from_dict(values | {"evaluators": list(evaluators)})

    c = with_evaluators({"label": "c4", "type": "perplexity", "paths": ["val.npy"]})
    assert c.evaluators[0].paths == ("val.npy",)
    with pytest.raises(ConfigError, match=r"config\.evaluators\[0\]: .*needs paths"):
        with_evaluators({"label": "c4", "type": "perplexity"})
    with pytest.raises(ConfigError, match=r"config\.evaluators\[1\]: Unknown downstream task 'copaa'"):
        with_evaluators({"label": "copa"}, {"label": "copaa"})
    with pytest.raises(ConfigError, match="labels must be unique"):
        with_evaluators({"label": "copa"}, {"label": "copa"})
    with pytest.raises(ConfigError, match="eval_interval=0 must be positive"):
        TrainConfig.from_dict(values | {"eval_interval": 0})
