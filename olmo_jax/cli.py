"""What every olmo_jax command shares: its argument parser, how it reads a config, and how it reports errors.

- `ArgumentParser`: argparse whose own errors (an unknown flag, a bad value) are `UsageError`s like every other user
  error, with `--verbosity` on every command and, for commands that take a config, `--config FILE` plus any number
  of `--config.key=value` overrides, read by `olmo_jax.config.load_config` (the one config path).
- `main`: runs a command's body; an `OlmoJaxError` becomes one `error: <message>` line on stderr and exit status 1.
  With `--verbosity=1` or `OLMO_JAX_TRACEBACK=1` the full chain (traceback and causes) follows it. Anything else is
  a bug and keeps Python's traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from olmo_jax.errors import OlmoJaxError, UsageError

TRACEBACK_ENV = "OLMO_JAX_TRACEBACK"  # "1": print the full chain of an error, not only its message
CONFIG_HELP = ("--config.KEY=VALUE overrides any key of the config file (repeat a tuple key to give several values).\n"
               "Every key, its default and its meaning: docs/configuration.md (or python tools/config_reference.py).")


class ArgumentParser(argparse.ArgumentParser):
    """argparse for olmo_jax commands: errors raise UsageError (exit 1 through `main`), `--help` exits 0."""

    def __init__(self, *args: object, config_default: str | None = None, takes_config: bool = False,
                 **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        if takes_config:
            kwargs["epilog"] = "\n\n".join(filter(None, [kwargs.get("epilog"), CONFIG_HELP]))
        super().__init__(*args, **kwargs)
        self.takes_config = takes_config
        self.add_argument("--verbosity", type=int, default=0,
                          help=f"1: also print library INFO logs and the full chain of an error (or {TRACEBACK_ENV}=1)")
        if takes_config:
            self.add_argument("--config", default=config_default, required=config_default is None,
                              help="config file" + (f" (default: {config_default})" if config_default else ""))

    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise UsageError(f"{message} (usage: {usage}; see {self.prog} --help)")

    def parse_with_overrides(self, argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
        """Parse own flags; with a config, also collect the `--config.key=value` overrides (in order)."""
        args, rest = self.parse_known_args(argv)
        overrides = [a for a in rest if a.startswith("--config.")] if self.takes_config else []
        unknown = [a for a in rest if a not in overrides]
        if unknown:
            hint = " (config overrides look like --config.key=value)" if self.takes_config else ""
            self.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        set_verbosity(args.verbosity)
        return args, overrides


def set_verbosity(level: int) -> None:
    """0: Orbax's and XLA's INFO logs (absl logging, every step of their work) are hidden, and so are Orbax's reports
    that `_quiet_orbax` names; 1 and up: all shown."""
    import logging as std_logging

    from absl import logging

    logging.set_verbosity(logging.INFO if level >= 1 else logging.WARNING)
    if level >= 1:
        os.environ[TRACEBACK_ENV] = "1"
    else:
        std_logging.getLogger("absl").addFilter(_quiet_orbax)
        std_logging.getLogger("asyncio").addFilter(_quiet_orbax)


def _quiet_orbax(record: object) -> bool:
    """Drop, at verbosity 0: Orbax's warning that a reader's folder is read-only (readers open checkpoints read-only on
    purpose), and Orbax's and asyncio's reports of a failed checkpoint write or read from their own threads (the
    failure reaches the command as one `error:` line, olmo_jax/train/checkpoint.py)."""
    message = str(getattr(record, "msg", ""))
    if message.startswith("Given directory is read only"):
        return False
    from_orbax = any("orbax" in str(getattr(record, name, "")) for name in ("pathname", "msg", "args"))
    return not (from_orbax and getattr(record, "levelno", 0) >= 40)


def report(error: OlmoJaxError) -> None:
    """`error: <message>` on stderr; the whole chain too when asked for."""
    print(f"error: {error}", file=sys.stderr)
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        traceback.print_exception(error, file=sys.stderr)


def main(body: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command: its exit status, 1 after an OlmoJaxError (reported as one line)."""
    try:
        return body(argv) or 0
    except OlmoJaxError as e:
        report(e)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C (the first asks a run to stop cleanly)
        print("error: interrupted", file=sys.stderr)
        return 130
