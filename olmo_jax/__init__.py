"""olmo_jax: OLMo-1B pretraining in JAX/Flax, exact to allenai/OLMo.

The model names are imported lazily so that tools which never touch JAX (data preparation, downloads) start fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ModelConfig", "OLMo", "init_params", "param_shapes"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in __all__:
        from olmo_jax import model

        return getattr(model, name)
    raise AttributeError(f"module 'olmo_jax' has no attribute {name!r}")
