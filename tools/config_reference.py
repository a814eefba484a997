"""Print the configuration reference: every key of a config file with its default and the comment that explains it.

    python tools/config_reference.py [--config=configs/1b.py] [--config.key=value ...]

The README's "Configuration reference" table is this output; tests/test_readme.py fails when they drift apart, so
the config file's comments are the one place a key is documented. The values are the config file's, read as every
command reads it (olmo_jax.config.config_dict), with any --config.key=value overrides applied.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from olmo_jax import cli
from olmo_jax.config import config_dict


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Nested ConfigDict → {"model.d_model": 2048, ...} in definition order."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if hasattr(value, "items") and not isinstance(value, tuple):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def format_default(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], dict):
        labels = ", ".join(str(v.get("label")) for v in value)
        return f"({labels})"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def comments(source: str) -> dict[str, str]:
    """For each `c.<key> = ...` line: its trailing comment, else the comment lines just above it."""
    found: dict[str, str] = {}
    above: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").strip())
            continue
        match = re.match(r"c\.([\w.]+)\s*=\s*(.*)$", stripped)
        if match:
            trailing = re.search(r"\s#\s*(.*)$", match.group(2))
            found[match.group(1)] = trailing.group(1).strip() if trailing else " ".join(above)
        if stripped and not stripped.startswith(")"):
            above = []
    return found


def reference(path: str | Path, overrides: Sequence[str] = ()) -> str:
    values = flatten(config_dict(path, overrides))
    notes = comments(Path(path).read_text())
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, value in values.items():
        meaning = notes.get(key, "").replace("|", "\\|")
        rows.append(f"| `{key}` | `{format_default(value)}` | {meaning} |")
    return "\n".join(rows)


def parser() -> cli.ArgumentParser:
    return cli.ArgumentParser(prog="python tools/config_reference.py", description=__doc__, takes_config=True,
                              config_default="configs/1b.py")


def run(argv: list[str] | None = None) -> int:
    args, overrides = parser().parse_with_overrides(argv)
    print(reference(args.config, overrides))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
