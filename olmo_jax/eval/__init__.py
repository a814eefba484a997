"""Evaluation as OLMo runs it in the loop: evaluator configs, the downstream tasks (rows → prompts), and the
evaluators that score them and held-out perplexity. `python -m olmo_jax.eval` is the command
(olmo_jax/eval/__main__.py)."""

from olmo_jax.lazy import lazy_exports

_EXPORTS = {
    "EvaluatorConfig": "config",
    "TASKS": "tasks", "RECIPE_TASKS": "tasks", "Task": "tasks", "Doc": "tasks", "get_task": "tasks",
    "Evaluators": "evaluators", "Scorer": "evaluators", "Result": "evaluators",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
