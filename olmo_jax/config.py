"""The boundary between ml_collections config files and the typed, frozen configs the library uses.

`configs/*.py` return a `ConfigDict` whose keys mirror OLMo's `TrainConfig` YAML names; `load_config` applies
command-line style overrides and `TrainConfig.from_dict` turns it into frozen dataclasses, validated once here.
Library code never reads a ConfigDict.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import ml_collections

from olmo_jax.data import DataConfig
from olmo_jax.distributed import DistributedConfig
from olmo_jax.evaluate import EvaluatorConfig
from olmo_jax.model import ModelConfig
from olmo_jax.monitor import WandbConfig
from olmo_jax.optim import OptimizerConfig, SchedulerConfig
from olmo_jax.sharding import MeshConfig

Precision = Literal["amp_bf16", "fp32"]


class ConfigError(ValueError):
    """A configuration value that cannot work, with the key, the value and the fix."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. Field names follow OLMo's TrainConfig where the concept exists."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
    run_name: str = "olmo"
    seed: int = 6198
    precision: Precision = "amp_bf16"
    max_duration: int = 739_328  # steps; defines the LR schedule's length
    stop_at: int | None = None  # end the run early at this step without changing the schedule
    global_train_batch_size: int = 2048
    device_train_microbatch_size: int = 8
    max_grad_norm: float = 1.0
    softmax_auxiliary_loss: bool = False  # z-loss
    save_folder: str = "runs/olmo"
    save_interval: int = 1000
    save_num_checkpoints_to_keep: int = 3
    load_path: str | None = None  # a checkpoint (run dir, checkpoints/ or step dir) or an HF directory
    reset_optimizer_state: bool = False  # with load_path: take the weights only, new optimizer, step 0
    allow_resume_mismatch: bool = False  # resume although the checkpoint's model or data fingerprint differs
    console_log_interval: int = 10
    tensorboard: bool = True  # event files in <save_folder>/tensorboard
    loss_chunk_size: int = 512  # sequence positions whose logits are materialised at once in the loss
    # OLMo: tokenizer.identifier. A known name, a tokenizer.json or an HF directory (olmo_jax/tokenizer.py).
    tokenizer: str = "allenai_gpt-neox-olmo-dolma-v1_5"
    evaluators: tuple[EvaluatorConfig, ...] = ()  # run every eval_interval steps and at the end (olmo_jax/evaluate.py)
    eval_interval: int = 1000
    device_eval_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.precision not in Precision.__args__:
            raise ConfigError(f"precision={self.precision!r} must be one of {list(Precision.__args__)}.")
        for name in ("max_duration", "global_train_batch_size", "device_train_microbatch_size", "save_interval",
                     "console_log_interval", "save_num_checkpoints_to_keep", "loss_chunk_size", "eval_interval",
                     "device_eval_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive.")
        if self.global_train_batch_size % self.device_train_microbatch_size:
            raise ConfigError(
                f"global_train_batch_size={self.global_train_batch_size} is not a multiple of "
                f"device_train_microbatch_size={self.device_train_microbatch_size}."
            )
        if self.stop_at is not None and not 0 < self.stop_at <= self.max_duration:
            raise ConfigError(f"stop_at={self.stop_at} must be in [1, max_duration={self.max_duration}].")

    @property
    def last_step(self) -> int:
        return self.stop_at or self.max_duration

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TrainConfig:
        """Build from a (possibly nested) mapping such as a ConfigDict; `precision` sets the model's dtype."""
        train = build_dataclass(cls, config)
        dtype = "bfloat16" if train.precision == "amp_bf16" else "float32"
        return dataclasses.replace(train, model=dataclasses.replace(train.model, compute_dtype=dtype))


def build_dataclass(cls: type, values: Mapping[str, Any], where: str = "config") -> Any:
    """Recursively build dataclass `cls` from a mapping, rejecting unknown keys and converting lists to tuples."""
    if isinstance(values, ml_collections.ConfigDict):
        values = values.to_dict()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"Unknown key(s) {[f'{where}.{k}' for k in unknown]}; known keys: {sorted(names)}.")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = build_dataclass(hint, value, f"{where}.{name}")
        elif _is_sequence_of_configs(hint) and value is not None:
            item = typing.get_args(hint)[0]
            value = tuple(build_dataclass(item, v, f"{where}.{name}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: {e}") from None


def _is_sequence_of_configs(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin not in (tuple, Sequence, list):
        return False
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    return len(args) == 1 and dataclasses.is_dataclass(args[0])


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Import a config file by path (`configs/1b.py` is not an importable module name) and call get_config()."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; the shipped ones are configs/tiny.py and configs/1b.py.")
    spec = importlib.util.spec_from_file_location(f"olmo_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"Config file {path} has no get_config() function.")
    config = module.get_config()
    config.lock()
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Apply `key.sub=value` overrides (the `--config.` prefix optional) for tools that do not use absl flags.

    Values are parsed as Python literals when they are, else taken as strings; a misspelt key is an error.
    """
    for item in overrides:
        key, sep, raw = item.removeprefix("--").removeprefix("config.").partition("=")
        if not sep:
            raise ConfigError(f"Override {item!r} is not of the form key=value.")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = config
        *parents, leaf = key.split(".")
        try:
            for part in parents:
                node = node[part]
            current = node[leaf]
        except (KeyError, AttributeError):
            raise ConfigError(f"Override {item!r}: no config key {key!r}.") from None
        if isinstance(current, tuple) and not isinstance(value, tuple | list):
            value = (value,)
        node[leaf] = _coerce(value, current, key)
    return config


def _coerce(value: Any, current: Any, key: str) -> Any:
    if current is None or value is None:
        return value
    if isinstance(current, bool) or isinstance(value, bool):
        return value
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, int | float | str) and not isinstance(value, type(current)):
        raise ConfigError(f"Override {key}={value!r}: expected a {type(current).__name__}.")
    return value


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Config file + overrides → validated TrainConfig (the path tools take; the train CLI uses absl flags)."""
    return TrainConfig.from_dict(apply_overrides(load_config_file(path), overrides))


def none_or(field_type: type) -> ml_collections.FieldReference:
    """A config field that defaults to None yet can be overridden from the command line (ml_collections trap)."""
    return ml_collections.FieldReference(None, field_type=field_type)


__all__ = [
    "ConfigError", "TrainConfig", "apply_overrides", "build_dataclass", "load_config", "load_config_file", "none_or",
]
