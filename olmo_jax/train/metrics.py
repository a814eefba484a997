"""Where a run's metrics go: the console line, `<save_folder>/metrics.jsonl`, TensorBoard and Weights & Biases."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from olmo_jax.errors import ConfigError
from olmo_jax.jsonl import keep_through, records


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def console_line(step: int, last_step: int, metrics: dict[str, float], eta: float | None) -> str:
    parts = [f"step {step}/{last_step}"]
    if "train/loss" in metrics:
        parts.append(f"loss {metrics['train/loss']:.4f}")
    if "train/lr" in metrics:
        parts.append(f"lr {metrics['train/lr']:.3e}")
    if "train/grad_norm" in metrics:
        parts.append(f"grad_norm {metrics['train/grad_norm']:.3f}")
    if "throughput/tokens_per_second" in metrics:
        parts.append(f"{metrics['throughput/tokens_per_second']:,.0f} tok/s")
    if "throughput/mfu" in metrics:
        parts.append(f"MFU {100 * metrics['throughput/mfu']:.1f}%")
    if eta is not None:
        parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


class MetricsWriter:
    """Appends metrics to `<run_dir>/metrics.jsonl`, TensorBoard event files and (optionally) Weights & Biases.

    Given `start_step`, a resumed run first drops what its killed predecessor logged after that step, in all three,
    so every step is recorded once. Only process 0 writes; other processes get a writer that does nothing.
    """

    def __init__(
        self, run_dir: Path, start_step: int | None = None, enabled: bool = True, tensorboard: bool = True,
        wandb: dict | None = None,
    ) -> None:
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        if start_step is not None:
            keep_through(path, start_step)
        self._jsonl = open(path, "a", buffering=1)  # noqa: SIM115 (closed in close())
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = start_step + 1 if start_step else None
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)
        if wandb is not None:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise ConfigError(
                    "wandb.enabled is set but wandb is not installed: pip install 'olmo_jax[wandb]' or set "
                    "--config.wandb.enabled=False."
                ) from None
            id_file = run_dir / "wandb_id.txt"  # one W&B run across resumes
            run_id = id_file.read_text().strip() if id_file.exists() else wandb_lib.util.generate_id()
            id_file.write_text(run_id + "\n")
            self._wandb = wandb_lib.init(id=run_id, resume="allow", **wandb)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; when a resumed run logged a step again, the later record wins."""
    by_step: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
    for record in records(Path(path).read_text()):
        by_step[(record["step"], tuple(sorted(record)))] = record
    return sorted(by_step.values(), key=lambda r: r["step"])
