"""olmo_jax: OLMo-1B pretraining in JAX/Flax, exact to allenai/OLMo.

The package is laid out by concept (docs/layout.md): `model/` (architecture, init, attention, the transformer, HF
conversion), `train/` (step, loss, optimizer, the training loop and its hooks, checkpoints, metrics), `data/` (token
files, global order, prefetch, remote files, tokenizer, data preparation), `eval/` (downstream tasks, evaluators),
`parallel/` (mesh and shardings, multi-process start, XLA flags), `generate.py`, `config.py` (config files → typed
configs), `cli.py` (what every command shares) and `errors.py` (the one error family). Names are imported on first
use, so tools that never touch JAX start fast.
"""

from olmo_jax.lazy import lazy_exports

__version__ = "0.2.0"
_EXPORTS = {
    "ModelConfig": "model.config", "RunOptions": "model.config",
    "OLMo": "model.transformer", "init_params": "model.transformer", "param_shapes": "model.transformer",
    "OlmoJaxError": "errors",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
