"""The boundary between ml_collections config files and the typed, frozen configs the library uses.

`configs/*.py` return a `ConfigDict` whose keys mirror OLMo's `TrainConfig` YAML names; configs/1b.py holds every key
with its value and meaning, and it is the only place defaults live: the dataclasses below have none, so a config
that lacks a key is an error naming it. Every entry point (the train command and every tool) reads a config file
and its `--config.key=value` overrides through `load_config`, one ml_collections `config_flags` parse: repeated
tuple flags, Python literals, `None` defaults and "did you mean" behave the same everywhere. `TrainConfig.from_dict`
then builds the frozen dataclasses, each section validating itself. Library code never reads a ConfigDict.

Two config keys are not architecture even though they sit under `model.` (where OLMo users look for them):
`model.attention_impl` and `model.remat`. With `precision` they become the run's `RunOptions` (how the model runs,
never saved as part of a checkpoint's model).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import ml_collections
from absl import flags
from ml_collections import config_flags

from olmo_jax.data.config import DataConfig
from olmo_jax.errors import ConfigError, OlmoJaxError
from olmo_jax.eval.config import EvaluatorConfig
from olmo_jax.model.config import ModelConfig, RunOptions
from olmo_jax.parallel.config import DistributedConfig, MeshConfig
from olmo_jax.train.config import OptimizerConfig, SchedulerConfig, SpikeGuardConfig, WandbConfig

Precision = Literal["amp_bf16", "fp32"]
LossNormalization = Literal["targets", "tokens"]
DTYPE_OF_PRECISION: dict[str, str] = {"amp_bf16": "bfloat16", "fp32": "float32"}  # OLMo's names → compute dtype
RUN_KEYS_UNDER_MODEL = ("attention_impl", "remat")  # config keys under model. that are RunOptions
CONFIG_KEYS_DOC = "docs/configuration.md"  # where every --config.* key is listed (tools/config_reference.py)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. Field names follow OLMo's TrainConfig where the concept exists; what each means and
    its recipe value are in configs/1b.py."""

    model: ModelConfig
    run: RunOptions  # from the keys precision, model.attention_impl and model.remat
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    loss_spike_guard: SpikeGuardConfig
    data: DataConfig
    mesh: MeshConfig
    distributed: DistributedConfig
    wandb: WandbConfig
    run_name: str
    seed: int
    max_duration: int  # steps; also the LR schedule's length
    stop_at: int | None
    global_train_batch_size: int
    device_train_microbatch_size: int
    max_grad_norm: float | None
    softmax_auxiliary_loss: bool
    loss_normalization: LossNormalization
    save_folder: str
    save_interval: int
    save_num_checkpoints_to_keep: int
    load_path: str | None
    reset_optimizer_state: bool
    allow_resume_mismatch: bool
    allow_optimizer_change: bool
    console_log_interval: int
    tensorboard: bool
    loss_chunk_size: int
    tokenizer: str
    evaluators: tuple[EvaluatorConfig, ...]
    eval_interval: int
    device_eval_batch_size: int

    def __post_init__(self) -> None:
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
        if self.loss_normalization not in LossNormalization.__args__:
            raise ConfigError(f"loss_normalization={self.loss_normalization!r} must be 'targets' (B·(T−1), ai2-olmo "
                              "≤ 0.3.0, which trained OLMo-1B) or 'tokens' (B·T, ai2-olmo ≥ 0.4.0).")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm={self.max_grad_norm} must be positive, or None for no clipping.")
        labels = [e.label for e in self.evaluators]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"evaluators: labels must be unique; got {labels}.")

    @property
    def last_step(self) -> int:
        return self.stop_at or self.max_duration

    @property
    def data_seed(self) -> int:
        """The seed of the data order: data.seed, else the run's seed (OLMo's rule)."""
        return self.data.seed if self.data.seed is not None else self.seed

    @property
    def precision(self) -> Precision:
        return next(p for p, dtype in DTYPE_OF_PRECISION.items() if dtype == self.run.dtype)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TrainConfig:
        """Build from a nested mapping in the config files' layout (a ConfigDict, or `to_dict()`'s output)."""
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        model = dict(values.get("model", {}))
        run = {k: model.pop(k) for k in RUN_KEYS_UNDER_MODEL if k in model}
        if "precision" in values:
            precision = values.pop("precision")
            if precision not in DTYPE_OF_PRECISION:
                raise ConfigError(f"precision={precision!r} must be one of {list(DTYPE_OF_PRECISION)}.")
            run["dtype"] = DTYPE_OF_PRECISION[precision]
        missing = sorted({"dtype", *RUN_KEYS_UNDER_MODEL} - set(run))
        if missing:
            names = ["precision" if k == "dtype" else f"model.{k}" for k in missing]
            raise ConfigError(f"config: missing key(s) {names}; every key is listed in configs/1b.py.")
        values["model"], values["run"] = model, run
        return build_dataclass(cls, values)

    def to_dict(self) -> dict[str, Any]:
        """The config in the config files' layout (plain Python values): `from_dict(c.to_dict()) == c`."""
        values = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        run = values.pop("run")
        values["precision"] = self.precision
        values["model"] |= {k: run[k] for k in RUN_KEYS_UNDER_MODEL}
        return values


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def build_dataclass(cls: type, values: Mapping[str, Any], where: str = "config") -> Any:
    """Recursively build dataclass `cls` from a mapping, rejecting unknown and missing keys and converting lists to
    tuples."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"Unknown key(s) {[f'{where}.{k}' for k in unknown]}; known keys: {sorted(fields)}.")
    required = {n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(values))
    if missing:
        raise ConfigError(f"Missing key(s) {[f'{where}.{k}' for k in missing]}; every key is listed in "
                          "configs/1b.py (start your config file from it).")
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
    except ConfigError as e:
        if where.endswith("]"):  # an entry of a list, whose own message cannot know its position
            raise ConfigError(f"{where}: {e}") from None
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _is_sequence_of_configs(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin not in (tuple, Sequence, list):
        return False
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    return len(args) == 1 and dataclasses.is_dataclass(args[0])


def config_dict(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Config file + overrides → a locked ConfigDict, parsed exactly as `--config=PATH --config.key=value ...` on a
    command line (ml_collections' config_flags on fresh absl flag values).

    An override is `--config.key=value` (the `--config.` prefix may be left out in Python calls: `key=value`).
    Repeating a tuple key collects the values (`--config.data.paths=a.npy --config.data.paths=b.npy`); a value is a
    Python literal when it parses as one (`'--config.optimizer.betas=(0.9, 0.99)'`); keys that default to None take
    values of their declared type (`--config.stop_at=100`).
    """
    file, colon, _ = str(path).partition(".py:")  # ml_collections: FILE.py:ARGUMENT passes get_config a value
    file = Path(file + ".py") if colon else Path(path)
    if not file.is_file():
        raise ConfigError(f"Config file {file} does not exist; the shipped ones are configs/tiny.py, configs/1b.py "
                          "and configs/olmo_yaml.py.")
    argv = ["olmo_jax", f"--config={path}", *(o if o.startswith("--") else f"--config.{o}" for o in overrides)]
    flag_values = flags.FlagValues()
    # sys_argv: config_flags defines a flag for each override it finds there (by default in sys.argv).
    holder = config_flags.DEFINE_config_file("config", None, "Config file.", flag_values=flag_values,
                                             lock_config=True, sys_argv=argv)
    try:
        flag_values(argv)
        return holder.value
    except (AttributeError, KeyError) as e:  # an unknown key of the locked ConfigDict, with a "Did you mean"
        raise ConfigError(_unknown_key_message(str(e), argv)) from e
    except flags.UnrecognizedFlagError as e:
        raise ConfigError(f"{e.flagname}: not a config flag ({_one_line(e)}); config overrides look like "
                          f"--config.key=value (every key: {CONFIG_KEYS_DOC}).") from e
    except flags.Error as e:  # a value of the wrong type
        raise ConfigError(_one_line(e)) from e
    except (OSError, SyntaxError, ImportError, NameError) as e:  # the config file itself fails to load
        raise ConfigError(f"Config file {path} could not be loaded ({type(e).__name__}: {_one_line(e)}).") from e
    except OlmoJaxError as e:  # a config file that reads another format (configs/olmo_yaml.py) and found it wanting
        raise ConfigError(f"Config file {path}: {e}") from e


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _unknown_key_message(message: str, argv: Sequence[str]) -> str:
    """`--config.model.d_modle=3: no config key model.d_modle. Did you mean model.d_model?` from ml_collections'
    AttributeError ('d_modle'\nDid you mean "d_model" instead of "d_modle"?)."""
    names = re.findall(r"[\w-]+", message.split("\n")[0])
    wrong = names[0] if names else "?"
    suggestion = re.search(r'Did you mean "([^"]+)"', message)
    for flag in argv:
        key = flag.removeprefix("--config.").split("=")[0]
        if flag.startswith("--config.") and wrong in key.split("."):
            parts = key.split(".")
            parent = parts[:parts.index(wrong)]
            hint = f" Did you mean {'.'.join([*parent, suggestion[1]])}?" if suggestion else ""
            return f"{flag}: no config key {key}.{hint} (every key: {CONFIG_KEYS_DOC})"
    return f"No config key {wrong!r}: {' '.join(message.split())} (every key: {CONFIG_KEYS_DOC})"


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Config file + `--config.key=value` overrides → the validated TrainConfig (every entry point's one path)."""
    return TrainConfig.from_dict(config_dict(path, overrides))


def none_or(field_type: type) -> ml_collections.FieldReference:
    """A config field that defaults to None yet can be overridden from the command line (ml_collections trap)."""
    return ml_collections.FieldReference(None, field_type=field_type)


__all__ = ["CONFIG_KEYS_DOC", "ConfigError", "TrainConfig", "build_dataclass", "config_dict", "load_config",
           "none_or"]
