"""The one family of errors olmo_jax raises for things a user can fix.

Every command catches `OlmoJaxError` alone and prints `error: <message>` (exit status 1); a message names the value
that cannot work and the fix. Anything else that escapes is a bug and keeps its traceback. `OLMO_JAX_TRACEBACK=1` (or
`--verbosity=1` on any command) prints the full chain of an `OlmoJaxError` too (olmo_jax/cli.py).
"""

from __future__ import annotations


class OlmoJaxError(Exception):
    """Something olmo_jax cannot do as asked; the message says what and how to fix it."""


class ConfigError(OlmoJaxError):
    """A configuration value that cannot work (a config key, a command-line flag, a mesh that does not fit the
    devices, a missing optional package), with the key, the value and the fix."""


class UsageError(OlmoJaxError):
    """A command-line or API argument that cannot work (a sampling setting, a task name, a malformed option)."""


class DataError(OlmoJaxError):
    """Training or evaluation data that cannot be used as configured, naming the file and the value."""


class RemoteError(DataError):
    """A remote file that cannot be read, naming the URL, the byte range when there is one, and the cause."""


class DownloadError(DataError):
    """A download that cannot succeed as asked; the message names the URL and what to do."""


class PrepareError(DataError):
    """Input that cannot be turned into token files, naming the file (and line) and the fix."""


class TaskDataError(DataError):
    """A downstream task's data that cannot be read or turned into prompts, naming the file, the row and the field."""


class AssetError(OlmoJaxError):
    """No source could provide a tokenizer or evaluation file; the message lists what was tried and the fix."""


class CheckpointError(OlmoJaxError):
    """A checkpoint that cannot be found, read or written, with what to do about it."""


class CheckpointDamagedError(CheckpointError):
    """A checkpoint step whose files cannot be read or whose arrays do not match the checksums saved with them."""


class CheckpointVanishedError(CheckpointError):
    """A checkpoint step that was deleted while being read (rotated away by the run that writes it)."""


class ConversionError(OlmoJaxError):
    """A Hugging Face directory (or a model) that cannot be converted, with what to do about it."""


class TrainingError(OlmoJaxError):
    """The run cannot go on (a non-finite loss, a checkpoint of another run...); the message says why and what to
    do."""


class DistributedError(OlmoJaxError):
    """JAX's distributed runtime could not start; the message says what to set."""


__all__ = [
    "AssetError", "CheckpointDamagedError", "CheckpointError", "CheckpointVanishedError", "ConfigError",
    "ConversionError", "DataError", "DistributedError", "DownloadError", "OlmoJaxError", "PrepareError", "RemoteError",
    "TaskDataError", "TrainingError", "UsageError",
]
