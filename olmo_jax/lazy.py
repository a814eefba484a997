"""Public names of a subpackage, imported on first use.

Each subpackage's `__init__.py` lists its public parts and the module that defines each one, through
`lazy_exports`. Nothing is imported until a name is used, so `import olmo_jax.train.step` loads the step's own
dependencies and not, say, the remote-data layer (tensorstore) that `olmo_jax.data` also names. Library code imports
from the defining module (`from olmo_jax.data.token_files import TokenFiles`); the package names are for users.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public name N lives in module `package.exports[N]`."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
