"""What every command shares (olmo_jax/cli.py): `--help` exits 0 and says where config keys are listed, a user error
is one `error:` line with exit status 1 (the full chain with OLMO_JAX_TRACEBACK=1), and no command hides bugs behind
that line by catching ValueError or Exception."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_python

MICRO = "tests/configs/micro.py"
MODULE_COMMANDS = ["olmo_jax.train", "olmo_jax.eval", "olmo_jax.generate"]
TOOLS = sorted(p.name for p in (ROOT / "tools").glob("*.py"))
TAKE_CONFIG = {"olmo_jax.train", "inspect_data.py", "benchmark.py", "memory_table.py", "bench_data.py",
               "bench_checksum.py", "bench_remote.py", "gpu_sweep.py", "config_reference.py", "bench_olmo_exchange.py"}


@pytest.mark.slow
@pytest.mark.parametrize("command", MODULE_COMMANDS + TOOLS)
def test_help_exits_0_and_names_the_config_reference(command: str) -> None:
    argv = ["-m", command] if command.startswith("olmo_jax") else [f"tools/{command}"]
    proc = run_python(*argv, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    if command in TAKE_CONFIG:
        assert "docs/configuration.md" in proc.stdout and "--config.KEY=VALUE" in proc.stdout


def _one_error_line(proc, starts: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert lines and lines[0].startswith(f"error: {starts}"), proc.stderr[-3000:]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tokens.npy"
    np.random.default_rng(0).integers(0, 250, 16 * 64, dtype=np.uint16).tofile(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "starts"), [
    (["--config.model.d_modle=3"], "--config.model.d_modle=3: no config key model.d_modle. Did you mean "
                                   "model.d_model?"),
    (["--config.mesh.data=3"], "mesh.data=3 × mesh.fsdp=1 does not fit the 1 devices"),
    (["--config.wandb.enabled=True"], "wandb.enabled is set but wandb is not installed"),
    (["--config.max_duration=-1"], "max_duration=-1 must be positive"),
    (["--config.model.attention_impl=cudnn"], "attention_impl='cudnn' (cuDNN flash attention) needs an NVIDIA GPU"),
    (["--max_duration=5"], "unrecognized arguments: --max_duration=5 (config overrides look like --config.key=value)"),
])
def test_train_user_errors_are_one_line(tokens: Path, tmp_path: Path, extra: list[str], starts: str) -> None:
    if "wandb" in extra[0] and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    proc = run_python("-m", "olmo_jax.train", f"--config={MICRO}", f"--config.data.paths={tokens}",
                      f"--config.save_folder={tmp_path}", *extra, timeout=300, env={"JAX_PLATFORMS": "cpu"})
    _one_error_line(proc, starts)


@pytest.mark.slow
def test_bad_tokenizer_ids_are_one_line(tmp_path: Path, tokenizer_json: Path) -> None:
    """eos/pad ids outside the tokenizer's vocabulary (the test tokenizer has 300 ids)."""
    from conftest import tiny_config

    from olmo_jax.model.hf import save_hf
    from olmo_jax.model.transformer import init_params

    config = tiny_config(vocab_size=1000, embedding_size=1024, eos_token_id=999)
    import jax

    save_hf(config, init_params(config, jax.random.key(0)), tmp_path / "hf")
    proc = run_python("-m", "olmo_jax.generate", "--hf", str(tmp_path / "hf"), "--tokenizer", str(tokenizer_json),
                      "--prompt", "x", timeout=300)
    _one_error_line(proc, f"eos_token_id=999 is outside the vocabulary of tokenizer {tokenizer_json}")


@pytest.mark.slow
def test_the_full_chain_on_request(tmp_path: Path) -> None:
    proc = run_python("-m", "olmo_jax.eval", "--checkpoint", str(tmp_path / "nope"), env={"OLMO_JAX_TRACEBACK": "1"})
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: Checkpoint path") and "Traceback" in proc.stderr
    proc = run_python("-m", "olmo_jax.eval", "--checkpoint", str(tmp_path / "nope"), "--verbosity=1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def _handlers(path: Path) -> list[tuple[int, str]]:
    """(line, caught names) of every except clause that catches ValueError, Exception or everything."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ExceptHandler):
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            names = {t.id if isinstance(t, ast.Name) else getattr(t, "attr", "") for t in types if t is not None}
            if node.type is None or names & {"ValueError", "Exception", "BaseException"}:
                found.append((node.lineno, ", ".join(sorted(names)) or "everything"))
    return found


COMMAND_FILES = [ROOT / "olmo_jax" / "train" / "__main__.py", ROOT / "olmo_jax" / "eval" / "__main__.py",
                 ROOT / "olmo_jax" / "generate.py", ROOT / "olmo_jax" / "cli.py",
                 *sorted((ROOT / "tools").glob("*.py"))]
# The GPU sweep's worker records any failure of one setting in its table and measures the next: a measurement
# harness, not an error report; its one handler is pinned here.
HARNESS = ROOT / "tools" / "gpu_sweep.py"


@pytest.mark.parametrize("path", [p for p in COMMAND_FILES if p != HARNESS],
                         ids=lambda p: p.name if p.parent.name == "tools" else str(p.relative_to(ROOT)))
def test_no_command_catches_valueerror_or_exception(path: Path) -> None:
    assert _handlers(path) == [], f"{path} catches {_handlers(path)}: catch OlmoJaxError (olmo_jax.cli.main) instead"


def test_the_sweeps_one_broad_handler_is_in_its_worker() -> None:
    [(line, names)] = _handlers(HARNESS)
    assert names == "Exception"
    assert "def run_worker(" in "".join(HARNESS.read_text().splitlines(keepends=True)[:line])


def test_a_users_error_is_one_line_and_a_bug_is_a_traceback(capsys: pytest.CaptureFixture) -> None:
    from olmo_jax import cli
    from olmo_jax.errors import DataError

    def users(argv: list[str] | None) -> int:
        raise DataError("Token file x.npy does not exist")

    assert cli.main(users, []) == 1
    assert capsys.readouterr().err == "error: Token file x.npy does not exist\n"

    def bug(argv: list[str] | None) -> int:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        cli.main(bug, [])


def test_argument_errors_are_usage_errors() -> None:
    from olmo_jax import cli
    from olmo_jax.errors import UsageError

    parser = cli.ArgumentParser(prog="prog", takes_config=True, config_default="configs/1b.py")
    parser.add_argument("--steps", type=int)
    with pytest.raises(UsageError, match=r"^argument --steps: invalid int value: 'x' \(usage: prog .*--help\)$"):
        parser.parse_with_overrides(["--steps", "x"])
    args, overrides = parser.parse_with_overrides(["--steps", "3", "--config.a=1", "--config.b=2"])
    assert (args.steps, args.config, overrides) == (3, "configs/1b.py", ["--config.a=1", "--config.b=2"])
    with pytest.raises(UsageError, match="unrecognized arguments: --stepz"):
        parser.parse_with_overrides(["--stepz"])
