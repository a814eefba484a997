"""The documentation is real: its configuration reference is the config file's, and every `python -m olmo_jax...`
and `python tools/...` command that README.md and docs/*.md show exists and its flags (config keys included) parse."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import sys

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_configuration_reference_matches_the_config_file() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    from config_reference import reference

    page = (ROOT / "docs" / "configuration.md").read_text()
    start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
    assert start in page and end in page, "docs/configuration.md lost its configuration reference markers"
    table = page.split(start)[1].split(end)[0].strip()
    assert table == reference(ROOT / "configs" / "1b.py"), (
        "docs/configuration.md's reference is out of date: paste `python tools/config_reference.py` between the "
        "markers, or fix the comments in configs/1b.py")


def _commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of the olmo_jax / tools commands in the pages' bash blocks."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\[[^\[\]]*\]", "", line)  # optional parts, written [--flag VALUE]
                for part in re.split(r"&&|;", line):
                    words = shlex.split(part, comments=True)
                    if "python" not in words:
                        continue
                    words = [w for w in words[words.index("python") + 1:] if w != "..."]
                    if words[:2] in (["-m", "pip"], ["-m", "pytest"]) or not words:
                        continue
                    commands.append((page.name, words))
    return commands


COMMANDS = _commands()


def test_the_docs_show_the_main_commands() -> None:
    shown = {" ".join(c[:2]) if c[0] == "-m" else c[0] for _, c in COMMANDS}
    assert {"-m olmo_jax.train", "-m olmo_jax.eval", "-m olmo_jax.generate", "tools/convert_to_hf.py",
            "tools/convert_from_hf.py", "tools/download_data.py", "tools/prepare_data.py",
            "tools/plot_metrics.py", "tools/benchmark.py", "tools/gpu_sweep.py", "tools/inspect_data.py"} <= shown
    readme = [c for page, c in COMMANDS if page == "README.md"]
    assert readme[0] == ["-m", "olmo_jax.train", "--config=configs/tiny.py"]  # the set-up command runs the main job


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("argv", [c for _, c in COMMANDS], ids=[f"{p}: {' '.join(c)[:60]}" for p, c in COMMANDS])
def test_documented_command_exists_and_its_flags_parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from olmo_jax import cli
    from olmo_jax.config import load_config

    monkeypatch.chdir(ROOT)
    if argv[0] == "-m":
        name, args = argv[1], argv[2:]
        spec = importlib.util.find_spec(name)
        assert spec is not None, f"no module {name}"
        if spec.submodule_search_locations is not None:  # a package: `python -m` runs its __main__
            name += ".__main__"
        module = importlib.import_module(name)
    else:
        path, args = ROOT / argv[0], argv[1:]
        assert path.is_file(), f"no file {path}"
        spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
        monkeypatch.syspath_prepend(str(path.parent))
        spec.loader.exec_module(module)
    original = cli.ArgumentParser.parse_with_overrides

    def parsed(self: cli.ArgumentParser, argv: list[str] | None = None) -> None:
        known, overrides = original(self, argv)
        if self.takes_config:
            load_config(known.config, overrides)  # the config keys exist and their values are valid
        raise _Parsed

    monkeypatch.setattr(cli.ArgumentParser, "parse_with_overrides", parsed)
    monkeypatch.setattr(sys, "argv", [argv[0], *args])
    with pytest.raises(_Parsed):
        module.main(args)


def test_layout_page_and_readme_link_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"
