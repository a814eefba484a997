"""`python -m olmo_jax.eval`: a table and JSON from an HF directory or a checkpoint, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_python, tiny_config

from olmo_jax.data.tokenizer import tokenizer_path
from olmo_jax.eval.__main__ import main
from olmo_jax.model.hf import save_hf
from olmo_jax.model.transformer import init_params
from olmo_jax.train.checkpoint import save_params

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random weights as an HF directory (with OLMo's tokenizer) and as a checkpoint."""
    config = tiny_config(vocab_size=50280, embedding_size=50304, eos_token_id=50279, init_fn="normal", init_std=0.1)
    params = init_params(config, jax.random.key(3))
    root = tmp_path_factory.mktemp("model")
    save_hf(config, params, root / "hf", tokenizer=tokenizer_path())
    save_params(root / "run", config, params)
    np.random.default_rng(0).integers(0, 50280, 64 * 6).astype(np.uint16).tofile(root / "val.npy")
    return {"hf": root / "hf", "run": root / "run", "val": root / "val.npy", "root": root}


def test_cli_on_an_hf_directory(model: dict[str, Path]) -> None:
    out = model["root"] / "hf.json"
    result = run_python("-m", "olmo_jax.eval", "--hf", str(model["hf"]), "--tasks", "copa,mrpc", "--limit", "6",
                        "--output", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["task", "metric", "score", "examples"]
    assert [line.split()[:2] + line.split()[3:] for line in lines[1:3]] == [["copa", "acc", "6"], ["mrpc", "f1", "6"]]
    report = json.loads(out.read_text())
    rows = [(r["task"], r["metric"], r["examples"]) for r in report["results"]]
    assert rows == [("copa", "acc", 6), ("mrpc", "f1", 6)]
    assert set(report["metrics"]) == {"eval/downstream/copa_acc", "eval/downstream/mrpc_f1"}
    assert lines[1].split()[2] == f"{100 * report['metrics']['eval/downstream/copa_acc']:.2f}%"


def test_cli_on_a_checkpoint_gives_the_same_scores(model: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out, hf_out = model["root"] / "run.json", model["root"] / "hf-copa.json"
    argv = ["--checkpoint", str(model["run"]), "--tasks", "copa", "--limit", "6", "--output", str(out),
            "--perplexity", f"val={model['val']}"]
    assert main(argv) == 0
    assert "val              Perplexity" in capsys.readouterr().out
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"eval/downstream/copa_acc", "eval/val/CrossEntropyLoss", "eval/val/Perplexity"}
    assert main(["--hf", str(model["hf"]), "--tasks", "copa", "--limit", "6", "--output", str(hf_out)]) == 0
    hf_metrics = json.loads(hf_out.read_text())["metrics"]
    assert metrics["eval/downstream/copa_acc"] == hf_metrics["eval/downstream/copa_acc"]


def test_how_the_model_runs_is_the_commands_choice(model: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint whose record says it was trained with cuDNN attention in bf16 (the model record of olmo_jax 0.1)
    is evaluated on this CPU all the same; --dtype and --attention_impl choose how it runs here."""
    from olmo_jax.train.checkpoint import Checkpointer, load_params

    _, params, meta = load_params(model["run"])
    writer = Checkpointer(tmp_path / "gpu_run" / "checkpoints", async_save=False)
    writer.save(0, params, meta | {"model": meta["model"] | {"compute_dtype": "bfloat16", "attention_impl": "cudnn",
                                                             "remat": "full"}})
    writer.wait()
    writer.close()
    reports = {}
    for name, extra in (("plain", []), ("bf16_xla", ["--dtype", "bfloat16", "--attention_impl", "xla"])):
        out = tmp_path / f"{name}.json"
        assert main(["--checkpoint", str(tmp_path / "gpu_run"), "--tasks", "copa", "--limit", "6", "--output",
                     str(out), *extra]) == 0
        reports[name] = json.loads(out.read_text())
    assert (reports["plain"]["dtype"], reports["plain"]["attention_impl"]) == ("float32", "xla")
    assert reports["bf16_xla"]["dtype"] == "bfloat16"
    assert main(["--checkpoint", str(tmp_path / "gpu_run"), "--attention_impl", "cudnn", "--dtype", "bfloat16"]) == 1


def test_a_bug_is_not_reported_as_a_user_error(model: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The command catches olmo_jax's error family only: a ValueError from inside is a bug and keeps its traceback."""
    from olmo_jax.eval import evaluators

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(evaluators.Evaluators, "results", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["--hf", str(model["hf"]), "--tasks", "copa", "--limit", "2"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--checkpoint", "/nonexistent/run"], "error: Checkpoint path /nonexistent/run does not exist."),
    (["--hf", "/nonexistent/hf"], "error: /nonexistent/hf is not a Hugging Face model directory"),
    (["--hf", "HF", "--tasks", "copa,nope"], "error: Unknown task(s) ['nope'] in --tasks"),
    (["--hf", "HF", "--tasks", "none"], "error: Nothing to evaluate"),
    (["--hf", "HF", "--perplexity", "val"], "error: --perplexity 'val' is not of the form LABEL=FILE"),
    (["--hf", "HF", "--tasks", "none", "--perplexity", "val=/nonexistent.npy"],
     "error: Token file /nonexistent.npy does not exist"),
    (["--hf", "HF", "--batch_size", "x"], "error: argument --batch_size: invalid int value: 'x'"),
    (["--hf", "HF", "--output", "HF/config.json"], "error: --output HF/config.json already exists; olmo_jax never"),
    (["--hf", "HF", "--tasks", "copa", "--tokenizer", "/nonexistent.json"], "error: Tokenizer '/nonexistent.json'"),
])
def test_cli_errors_are_one_line(model: dict[str, Path], capsys: pytest.CaptureFixture, argv: list[str],
                                 message: str) -> None:
    argv = [a.replace("HF", str(model["hf"])) for a in argv]
    message = message.replace("HF", str(model["hf"]))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
