"""tools/plot_metrics.py on metrics.jsonl files written by olmo_jax.monitor.MetricsWriter."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT, run_python

from olmo_jax.train.metrics import MetricsWriter

pytest.importorskip("matplotlib")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plot_metrics", ROOT / "tools/plot_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_run(run_dir: Path, steps: range, loss_scale: float, nan_step: int | None = None) -> None:
    """Curves shaped like a real run: decaying loss, warmup-then-cosine LR, evals every 50 steps."""
    writer = MetricsWriter(run_dir, tensorboard=False)
    for step in steps:
        lr = 4e-4 * min(1.0, step / 20) * (0.55 + 0.45 * math.cos(math.pi * step / 200))
        writer.write(step, {
            "train/loss": loss_scale * (8 * math.exp(-step / 40) + 2.5 + 0.05 * math.sin(step)),
            "train/lr": lr,
            "train/grad_norm": math.nan if step == nan_step else 1.5 * math.exp(-step / 60) + 0.3,
            "throughput/tokens_per_second": 52_000 + 800 * math.sin(step / 7),
        })
        if step % 50 == 0:
            writer.write(step, {"eval/v3-small-c4_en-validation/CrossEntropyLoss": 9 * math.exp(-step / 50) + 3})
    writer.close()


def assert_png(path: Path, width: int, height: int) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 30_000  # four panels of curves, not an empty canvas
    with Image.open(path) as image:
        assert image.size == (width, height)


def test_two_runs_overlaid_in_a_png(tmp_path: Path) -> None:
    write_run(tmp_path / "baseline", range(0, 200), 1.0)
    write_run(tmp_path / "resumed", range(0, 120), 1.1, nan_step=30)
    write_run(tmp_path / "resumed", range(100, 150), 0.9)  # a resume re-logs steps 100–119; these values win
    output = tmp_path / "plots" / "plot.png"
    result = run_python("tools/plot_metrics.py", str(tmp_path / "baseline"), str(tmp_path / "resumed"),
                        "--output", str(output), "--log-loss", timeout=120)
    assert result.returncode == 0, result.stderr
    def loss(scale: float, step: int) -> float:
        return scale * (8 * math.exp(-step / 40) + 2.5 + 0.05 * math.sin(step))

    assert result.stdout.splitlines() == [
        f"baseline: steps 0–199 (200 logged), last train/loss {loss(1.0, 199):.4f} at step 199",
        f"resumed: steps 0–149 (150 logged), last train/loss {loss(0.9, 149):.4f} at step 149",
        f"wrote {output}",
    ]
    assert result.stderr == "resumed: train/grad_norm is not finite at 1 step(s), from step 30\n"
    assert_png(output, 1430, 880)  # 2×2 panels of 6.5×4 inches at 110 dpi


def test_later_record_of_a_relogged_step_wins(tool: ModuleType, tmp_path: Path) -> None:
    write_run(tmp_path / "run", range(0, 10), 1.0)
    write_run(tmp_path / "run", range(5, 8), 2.0)
    steps, values = tool.load_run(tmp_path / "run")["train/loss"]
    assert steps == list(range(10))
    assert values[6] == pytest.approx(2.0 * (8 * math.exp(-6 / 40) + 2.5 + 0.05 * math.sin(6)))
    assert values[8] == pytest.approx(8 * math.exp(-8 / 40) + 2.5 + 0.05 * math.sin(8))


def test_wildcard_keys_fill_one_panel(tool: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path / "a", range(0, 101), 1.0)
    output = tmp_path / "eval.png"
    assert tool.main([str(tmp_path / "a"), "--output", str(output), "--keys", "eval/*/CrossEntropyLoss"]) == 0
    assert output.read_bytes()[:8] == PNG_SIGNATURE
    from PIL import Image

    with Image.open(output) as image:
        assert image.size == (715, 440)  # one panel


def test_unknown_key_lists_the_available_ones(tool: ModuleType, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path / "a", range(0, 3), 1.0)
    assert tool.main([str(tmp_path / "a"), "--output", str(tmp_path / "x.png"), "--keys", "train/los"]) == 1
    assert capsys.readouterr().err == (
        "error: No run has a metric matching 'train/los'; available: eval/v3-small-c4_en-validation/CrossEntropyLoss, "
        "throughput/tokens_per_second, train/grad_norm, train/loss, train/lr.\n"
    )
    assert not (tmp_path / "x.png").exists()


def test_an_unknown_image_format_is_a_clear_error(tool: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path / "a", range(0, 3), 1.0)
    assert tool.main([str(tmp_path / "a"), "--output", str(tmp_path / "plot.jpgg")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: Cannot write {tmp_path / 'plot.jpgg'}: give a file ending in one of ")
    assert ".pdf, " in err and ".png, " in err and ".svg, " in err


def test_a_directory_without_metrics_is_a_clear_error(tool: ModuleType, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty_run").mkdir()
    assert tool.main([str(tmp_path / "empty_run"), "--output", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'empty_run'} has no metrics.jsonl; give a run directory (python -m olmo_jax.train "
        "writes <run_dir>/metrics.jsonl).\n"
    )
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_says_how_to_install_it(tool: ModuleType, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_run(tmp_path / "a", range(0, 3), 1.0)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert tool.main([str(tmp_path / "a"), "--output", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err == "error: plotting needs matplotlib: pip install 'olmo_jax[plot]'\n"


def test_an_existing_image_is_never_replaced(tool: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_run(tmp_path / "a", range(1, 5), 1.0)
    (tmp_path / "plot.png").write_bytes(b"mine")
    assert tool.main([str(tmp_path / "a"), "--output", str(tmp_path / "plot.png")]) == 1
    assert "plot.png already exists; olmo_jax never replaces a file" in capsys.readouterr().err
    assert (tmp_path / "plot.png").read_bytes() == b"mine"
