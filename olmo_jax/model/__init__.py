"""The OLMo-1 model: its architecture config and run options, initialisation, attention, the Flax transformer, and
Hugging Face conversion."""

from olmo_jax.lazy import lazy_exports

_EXPORTS = {
    "ModelConfig": "config", "RunOptions": "config",
    "OLMo": "transformer", "init_params": "transformer", "param_shapes": "transformer",
    "load_hf": "hf", "save_hf": "hf",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
