"""olmo_jax: OLMo-1B pretraining in JAX/Flax, exact to allenai/OLMo."""

from olmo_jax.model import ModelConfig, OLMo, init_params, param_shapes

__all__ = ["ModelConfig", "OLMo", "init_params", "param_shapes"]
__version__ = "0.1.0"
