"""Plot training curves from runs' metrics.jsonl, several runs overlaid (needs: pip install 'olmo_jax[plot]').

    python tools/plot_metrics.py RUN_DIR [RUN_DIR ...] --output plot.png [--keys KEY ...] [--log-loss]

One panel per key against the step, one line per run labelled by its directory name. The default panels are loss,
learning rate, gradient norm and tokens per second; `--keys` picks others, and a key with wildcards fills one panel
with every matching key (e.g. --keys 'eval/*/CrossEntropyLoss'). A step logged twice by a resumed run counts once,
with its later value; non-finite values (logged as "nan"/"inf") are left as gaps and reported.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from pathlib import Path

from olmo_jax import cli
from olmo_jax.errors import OlmoJaxError
from olmo_jax.train.metrics import read_metrics

DEFAULT_KEYS = ("train/loss", "train/lr", "train/grad_norm", "throughput/tokens_per_second")
Series = dict[str, tuple[list[int], list[float]]]  # key → (steps, values)


class PlotError(OlmoJaxError):
    """Input that cannot be plotted; the message says which and why."""


def load_run(path: Path) -> Series:
    """Every numeric key of a run directory's (or a metrics.jsonl file's) records as (steps, values)."""
    file = path if path.is_file() else path / "metrics.jsonl"
    if not file.is_file():
        raise PlotError(f"{path} has no metrics.jsonl; give a run directory (python -m olmo_jax.train writes "
                        "<run_dir>/metrics.jsonl).")
    by_key: dict[str, dict[int, float]] = {}
    for record in read_metrics(file):
        for key, value in record.items():
            if key != "step":
                by_key.setdefault(key, {})[record["step"]] = float(value)  # non-finite values are logged as strings
    if not by_key:
        raise PlotError(f"{file} holds no metrics yet.")
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in by_key.items()}


def labels_of(paths: list[Path]) -> list[str]:
    """Directory names, or whole paths where names repeat."""
    names = [(p.parent if p.is_file() else p).resolve().name for p in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths, strict=True)]


def plot(runs: dict[str, Series], keys: list[str], output: Path, log_loss: bool = False) -> None:
    """Write one panel per key pattern, with a line per (run, matching key), to `output`."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'olmo_jax[plot]'") from None
    available = sorted({key for series in runs.values() for key in series})
    for pattern in keys:
        if pattern not in DEFAULT_KEYS and not fnmatch.filter(available, pattern):
            raise PlotError(f"No run has a metric matching {pattern!r}; available: {', '.join(available)}.")
    formats = FigureCanvasBase.get_supported_filetypes()
    if output.suffix.lstrip(".").lower() not in formats:
        raise PlotError(f"Cannot write {output}: give a file ending in one of .{', .'.join(sorted(formats))}.")
    cols = 1 if len(keys) == 1 else 2
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4 * rows), squeeze=False)
    for ax, pattern in zip(axes.flat, keys, strict=False):
        for label, series in runs.items():
            matched = fnmatch.filter(sorted(series), pattern)
            for key in matched:
                steps, values = series[key]
                finite = [v if math.isfinite(v) else math.nan for v in values]
                (line,) = ax.plot(steps, finite, label=label if len(matched) == 1 else f"{label}: {key}", linewidth=1.2)
                bad = [s for s, v in zip(steps, values, strict=True) if not math.isfinite(v)]
                if bad:  # a gap is easy to miss: mark where the values stop being finite
                    ax.axvline(bad[0], color=line.get_color(), linestyle=":", linewidth=1)
                    print(f"{label}: {key} is not finite at {len(bad)} step(s), from step {bad[0]}", file=sys.stderr)
        ax.set_title(pattern)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 5))  # the LR as 4e-4, not 0.00040
        if ax.lines:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        if pattern == "train/loss" and log_loss:
            ax.set_yscale("log")
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="python tools/plot_metrics.py", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (or metrics.jsonl files)")
    parser.add_argument("--output", required=True, type=Path, help="image to write, e.g. plot.png (or .pdf, .svg)")
    parser.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS), help="metric keys or wildcard patterns, "
                        "one panel each (default: %(default)s)")
    parser.add_argument("--log-loss", action="store_true", help="log scale for the train/loss panel")
    return parser


def run(argv: list[str] | None = None) -> int:
    args, _ = parser().parse_with_overrides(argv)
    if args.output.exists():
        raise PlotError(f"{args.output} already exists; olmo_jax never replaces a file: remove it or choose another "
                        "--output.")
    runs = {label: load_run(path) for label, path in zip(labels_of(args.runs), args.runs, strict=True)}
    plot(runs, args.keys, args.output, log_loss=args.log_loss)
    for label, series in runs.items():
        steps = sorted({s for steps, _ in series.values() for s in steps})
        loss = series.get("train/loss")
        last = f", last train/loss {loss[1][-1]:.4f} at step {loss[0][-1]}" if loss else ""
        print(f"{label}: steps {steps[0]}–{steps[-1]} ({len(steps)} logged){last}")
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
