"""The README is real: its configuration reference is the config file's, and every `python -m olmo_jax...` and
`python tools/...` command it shows exists and its flags parse."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_configuration_reference_matches_the_config_file() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    from config_reference import reference

    start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
    assert start in README and end in README, "the README lost its configuration reference markers"
    table = README.split(start)[1].split(end)[0].strip()
    assert table == reference(ROOT / "configs" / "1b.py"), (
        "README's configuration reference is out of date: paste `python tools/config_reference.py` between the "
        "markers, or fix the comments in configs/1b.py")


def _commands() -> list[list[str]]:
    """argv lists of the olmo_jax / tools commands in the README's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\[[^\[\]]*\]", "", line)  # optional parts, written [--flag VALUE]
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if "python" not in words:
                    continue
                words = [w for w in words[words.index("python") + 1:] if w != "..."]
                if words[:2] in (["-m", "pip"], ["-m", "pytest"]) or not words:
                    continue
                commands.append(words)
    return commands


COMMANDS = _commands()


def test_the_readme_shows_the_main_commands() -> None:
    shown = {" ".join(c[:2]) if c[0] == "-m" else c[0] for c in COMMANDS}
    assert {"-m olmo_jax.train", "-m olmo_jax.eval", "-m olmo_jax.generate", "tools/convert_to_hf.py",
            "tools/convert_from_hf.py", "tools/download_data.py", "tools/prepare_data.py",
            "tools/plot_metrics.py"} <= shown


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_readme_command_exists_and_its_flags_parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    if argv[0] == "-m":
        name, args = argv[1], argv[2:]
        assert importlib.util.find_spec(name) is not None, f"no module {name}"
        module = importlib.import_module(name)
    else:
        path, args = ROOT / argv[0], argv[1:]
        assert path.is_file(), f"no file {path}"
        spec = importlib.util.spec_from_file_location(f"readme_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        monkeypatch.syspath_prepend(str(path.parent))
        spec.loader.exec_module(module)
    if name_of(argv) == "olmo_jax.train":
        monkeypatch.setattr(sys, "argv", ["train", *args])  # ml_collections finds the overrides in sys.argv
        _parse_train_flags(module.define_config_flag, args)
        return

    def parsed(self: argparse.ArgumentParser, *a: object, **k: object) -> None:
        _, extra = original(self, *a, **k)
        if extra and not allow_extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        raise _Parsed

    original = argparse.ArgumentParser.parse_known_args
    allow_extra = "parse_known_args(" in Path(module.__file__).read_text()
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parsed)
    monkeypatch.setattr(sys, "argv", [argv[0], *args])
    with pytest.raises(_Parsed):
        module.main()


def name_of(argv: list[str]) -> str:
    return argv[1] if argv[0] == "-m" else argv[0]


def _parse_train_flags(define_config_flag: object, args: list[str]) -> None:
    """Parse as olmo_jax.train does, on fresh flag values (absl's global ones parse once per process)."""
    from absl import flags

    from olmo_jax.config import TrainConfig

    flag_values = flags.FlagValues()
    holder = define_config_flag(flag_values)
    flag_values(["train", *args])
    TrainConfig.from_dict(holder.value)  # the overrides' values build a valid config
