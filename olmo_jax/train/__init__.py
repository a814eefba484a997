"""Training: the pure step and its loss, OLMo's optimizer and schedules, the run assembled from factories and its
loop of hooks, where its state comes from, stopping, checkpoints, metrics, throughput and the step's profiling.
`python -m olmo_jax.train` is the command (olmo_jax/train/__main__.py)."""

from olmo_jax.lazy import lazy_exports

_EXPORTS = {
    "OptimizerConfig": "config", "SchedulerConfig": "config", "WandbConfig": "config",
    "TrainState": "step", "make_train_step": "step", "jit_train_step": "step",
    "make_optimizer": "optim", "lr_schedule": "optim", "olmo_lr": "optim",
    "Run": "trainer", "build_run": "trainer", "train": "trainer",
    "Checkpointer": "checkpoint", "load_params": "checkpoint", "save_params": "checkpoint",
    "MetricsWriter": "metrics", "read_metrics": "metrics",
    "benchmark": "profiling", "compile_step": "profiling",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
