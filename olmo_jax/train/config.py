"""The `optimizer`, `scheduler`, `loss_spike_guard` and `wandb` sections of a run's config; configs/1b.py gives every
value and says what it means (docs/configuration.md)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from olmo_jax.errors import ConfigError

SchedulerName = Literal["cosine_with_warmup", "linear_with_warmup", "constant"]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """OLMo's OptimizerConfig, AdamW only (§4.1-§4.2)."""

    name: Literal["adamw"]
    learning_rate: float  # the peak
    weight_decay: float
    betas: tuple[float, float]
    eps: float  # OLMo's 1e-5, not torch's 1e-8
    decay_norm_and_bias: bool
    decay_embeddings: bool

    def __post_init__(self) -> None:
        if self.name != "adamw":
            raise ConfigError(f"optimizer.name={self.name!r}: only 'adamw' is implemented (OLMo-1B's optimizer).")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.eps <= 0:
            raise ConfigError(
                f"optimizer: learning_rate={self.learning_rate} must be > 0, weight_decay={self.weight_decay} "
                f"≥ 0 and eps={self.eps} > 0."
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optimizer.betas={self.betas} must be two numbers in [0, 1).")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """OLMo's SchedulerConfig (units: steps). `t_max` None means the run's `max_duration`."""

    name: SchedulerName
    t_warmup: int
    alpha_f: float  # the final LR as a fraction of the peak
    t_max: int | None
    warmup_min_lr: float | None  # None → 0.1 × peak (OLMo's `_linear_warmup`)

    def __post_init__(self) -> None:
        if self.name not in SchedulerName.__args__:
            raise ConfigError(f"scheduler.name={self.name!r} must be one of {list(SchedulerName.__args__)}.")
        if self.t_warmup < 0 or not 0 <= self.alpha_f <= 1:
            raise ConfigError(f"scheduler: t_warmup={self.t_warmup} must be ≥ 0 and alpha_f={self.alpha_f} in "
                              "[0, 1].")
        if self.warmup_min_lr is not None and self.warmup_min_lr < 0:
            raise ConfigError(f"scheduler.warmup_min_lr={self.warmup_min_lr} must be ≥ 0 (and below the peak LR).")
        if self.t_max is not None and self.t_max < 1:
            raise ConfigError(f"scheduler.t_max={self.t_max} must be ≥ 1 or None (then max_duration).")


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Optional Weights & Biases logging (OLMo's `wandb` section); needs `pip install wandb`."""

    enabled: bool
    project: str
    entity: str | None
    group: str | None
    name: str | None  # None → run_name


@dataclasses.dataclass(frozen=True)
class SpikeGuardConfig:
    """The loss-spike guard, in the spirit of OLMo-core's SkipStepAdamW (olmo_jax/train/step.py): a step whose loss
    is more than `sigma` standard deviations above the mean of the last `window` steps' losses, or whose gradient
    norm is exactly 0 (a collapsed model), does not apply its update; after `max_skips` such steps in a row the run
    stops, before checkpointing that state. Off in configs/1b.py: OLMo-1B.yaml has no guard."""

    enabled: bool
    window: int  # steps of loss history a step is judged against; the guard judges once it has a full window
    sigma: float
    max_skips: int  # consecutive skipped steps the run rides out; one more and it stops (0: stop at the first)

    def __post_init__(self) -> None:
        if self.window < 2 or self.sigma <= 0 or self.max_skips < 0:
            raise ConfigError(f"loss_spike_guard: window={self.window} must be ≥ 2, sigma={self.sigma} > 0 and "
                              f"max_skips={self.max_skips} ≥ 0.")
