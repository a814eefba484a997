"""The speed tools on CPU at micro size: tools/benchmark.py (timing, AOT, memory table, errors), the step it times
being the trainer's, tools/bench_vs_torch.py and the GPU sweep driver (tools/gpu_sweep.py, XLA attention only)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_python

from olmo_jax.config import load_config
from olmo_jax.train import profiling

pytestmark = pytest.mark.slow

MICRO = "tests/configs/micro.py"


def _json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_benchmark_cli_reports_measured_fields(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.npy"
    np.random.default_rng(0).integers(0, 250, 16 * 40, dtype=np.uint16).tofile(tokens)  # 40 instances of 16
    r = _json(run_python("tools/benchmark.py", f"--config={MICRO}", "--config.model.remat=full", "--steps=3",
                         "--warmup=1", "--real", f"--config.data.paths={tokens}", "--json"))
    assert r["remat"] == "full" and r["attention_impl"] == "xla" and r["backend"] == "cpu"
    assert r["timed_steps"] == 3 and len(r["step_times"]) == 3 and r["warmup_steps"] == 1
    assert 0 < r["step_time_min"] <= r["step_time_median"] <= r["step_time_max"]
    assert r["tokens_per_step"] == 8 * 16 and r["tokens_per_second"] == pytest.approx(128 / r["step_time_median"])
    assert r["mfu"] is None and r["peak_flops_per_device"] is None and r["peak_bytes_in_use"] is None  # CPU
    assert r["lower_seconds"] > 0 and r["compile_seconds"] > 0 and math.isfinite(r["loss"])
    assert r["microbatch"] == 4 and r["grad_accum"] == 2 and r["data"] == "real"
    mem = r["compiled_memory"]
    assert mem["argument_bytes"] > 0 and mem["total_bytes"] >= mem["argument_bytes"]


def test_aot_only_and_memory_table() -> None:
    r = _json(run_python("tools/benchmark.py", f"--config={MICRO}", "--aot_only", "--json"))
    assert r["compile_seconds"] > 0 and "tokens_per_second" not in r
    table = _json(run_python("tools/benchmark.py", f"--config={MICRO}", "--memory_table", "--microbatches", "1",
                             "64", "--remats", "none", "full", "--memory_gb=1000", "--json"))
    rows = {(row["remat"], row["microbatch"]): row for row in table["rows"]}
    assert set(rows) == {("none", 1), ("none", 64), ("full", 1), ("full", 64)}
    assert rows[("none", 64)]["temp_bytes"] > rows[("none", 1)]["temp_bytes"]  # activations grow with the rows
    assert rows[("full", 64)]["argument_bytes"] == rows[("none", 64)]["argument_bytes"]  # the same state
    assert table["largest_fitting_microbatch"] == {"none": 64, "full": 64}
    assert "xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED" in table["xla_flags"]


def test_bad_choices_are_one_line_errors() -> None:
    proc = run_python("tools/benchmark.py", f"--config={MICRO}", "--config.model.attention_impl=cudnn", "--aot_only")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: attention_impl='cudnn'" in proc.stderr and "Use attention_impl 'auto'" in proc.stderr
    proc = run_python("tools/benchmark.py", f"--config={MICRO}", "--real", "--config.data.paths=/nope/tokens.npy")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "/nope/tokens.npy" in proc.stderr
    proc = run_python("tools/benchmark.py", f"--config={MICRO}", "--stepz=3")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: unrecognized arguments: --stepz=3")


def _program(compiled: jax.stages.Compiled) -> str:
    """The optimized HLO without source locations (which name the Python file that called jit)."""
    text = re.sub(r", metadata=\{[^}]*\}", "", compiled.as_text())
    return text.split("\nFileNames")[0]


def test_the_benchmarked_step_is_the_trainers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tools/benchmark.py times the program the trainer runs: the step of a run assembled by the trainer
    (build_run, as train() does) compiles to the same optimized HLO as the benchmark's, and both give the same
    metrics on the same state and batch."""
    from olmo_jax.train import trainer

    tokens = tmp_path / "tokens.npy"
    np.random.default_rng(0).integers(0, 250, 16 * 40, dtype=np.uint16).tofile(tokens)
    config = load_config(MICRO, [f"data.paths={tokens}", f"save_folder={tmp_path / 'run'}"])
    run = trainer.build_run(config)
    step = profiling.compile_step(config)
    batch = profiling.synthetic_batches(step, 1)[0]
    abstract_batch = jax.ShapeDtypeStruct(batch.shape, batch.dtype, sharding=run.step.batch_sharding)
    trainers = run.step.train_step.lower(run.step.abstract_state, abstract_batch).compile()
    assert _program(trainers) == _program(step.executable)
    state = run.step.init(jax.random.key(0))
    _, expected = trainers(state, batch)
    state = step.jitted.init(jax.random.key(0))
    _, times, metrics = profiling.time_steps(step, state, [batch], warmup=0, steps=1)
    assert len(times) == 1
    assert metrics == {k: float(v) for k, v in jax.device_get(expected).items()}
    monkeypatch.setattr(profiling, "peak_flops", lambda: 1e12)  # MFU against a stated peak
    t = profiling.throughput(step, [0.5, 0.25, 1.0])
    assert t["step_time_median"] == 0.5 and t["tokens_per_second"] == 128 / 0.5
    assert t["mfu"] == pytest.approx(128 / 0.5 * config.model.flops_per_token() / 1e12)


def test_bench_vs_torch_prints_both_throughputs_and_their_ratio() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    r = _json(run_python("tools/bench_vs_torch.py", "--d_model=32", "--n_layers=1", "--n_heads=2", "--seq_len=16",
                         "--vocab=256", "--batch=4", "--microbatch=2", "--steps=2", "--warmup=1", "--threads=1",
                         "--json"))
    assert r["jax"]["tokens_per_second"] > 0 and r["torch"]["tokens_per_second"] > 0
    assert r["ratio_vs_torch"] == pytest.approx(r["jax"]["tokens_per_second"] / r["torch"]["tokens_per_second"])
    assert r["model"]["params"] == 256 * 32 + 4 * 32 * 32 + 3 * 32 * 128  # the same model on both sides
    assert len(r["jax"]["step_times"]) == len(r["torch"]["step_times"]) == 2 and r["threads"] == 1
    # Same weights, batches, loss and optimizer: the same losses, step after step, to float rounding.
    assert r["jax"]["first_loss"] == pytest.approx(r["torch"]["first_loss"], rel=1e-5)
    assert r["jax"]["loss"] == pytest.approx(r["torch"]["loss"], rel=1e-4) and r["jax"]["loss"] < r["jax"]["first_loss"]


def test_bench_vs_torch_race_takes_turns_and_times_neither_warm_up_nor_the_first_step_of_a_turn() -> None:
    path = Path(__file__).parents[1] / "tools/bench_vs_torch.py"
    spec = importlib.util.spec_from_file_location("bench_vs_torch", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls: list[tuple[str, int]] = []

    def side(name: str):
        def run(i: int) -> float:
            calls.append((name, i))
            return 100.0 * len(calls)  # a distinct "duration" per call, to see which calls were kept
        return run

    times = bench.race({"a": side("a"), "b": side("b")}, warmup=1, steps=3, turn=2)
    # Each side: 1 warm-up, then turns of 1 untimed + up to 2 timed; b goes first in the second rotation.
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3),
                     ("b", 4), ("b", 5), ("a", 4), ("a", 5)]
    assert times == {"a": [400.0, 500.0, 1200.0], "b": [700.0, 800.0, 1000.0]}


def test_bench_attention_times_ours_the_generic_path_and_torch() -> None:
    r = _json(run_python("tools/bench_attention.py", "--batch=2", "--seq_len=16", "--heads=2", "--head_dim=8",
                         "--threads=1", "--repeats=2", "--json"))
    assert r["shape"] == [2, 16, 2, 8] and r["threads"] == 1
    torch = {"torch SDPA"} if importlib.util.find_spec("torch") else set()
    expected = {"ours (blocked XLA)", "jax generic XLA"} | torch
    assert set(r["timings"]) == expected
    assert all(t["forward_ms"] > 0 and t["forward_backward_ms"] > 0 for t in r["timings"].values())


def test_gpu_sweep_driver_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    proc = run_python("tools/gpu_sweep.py", f"--config={MICRO}", "--global_batch=8", "--attentions", "xla",
                      "--remats", "none", "full", "--microbatches", "4", "--steps=2", "--warmup=1",
                      "--final_steps=2", "--flag_sets", "none", "--budget_s=200", f"--out={tmp_path}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "sweep.json").read_text())
    phases = [(r["phase"], r["status"]) for r in result["records"]]
    assert phases == [("grid", "ok")] * 2 + [("flags", "ok"), ("final", "ok")]
    assert result["best"]["phase"] == "final" and result["best"]["timed_steps"] == 2
    assert result["records"][-2]["xla_flags"] == ""  # the 'none' flag set adds nothing
    table = (tmp_path / "sweep.md").read_text()
    assert table.count("| grid | recommended | xla |") == 2 and "Best: attention xla" in table
