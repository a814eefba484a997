"""Training data as OLMo reads it: the `data` config, token files, the global order and the batch of each step,
prefetching, files at URLs, downloads, text → token files, the tokenizer, offline assets and the quickstart corpus."""

from olmo_jax.lazy import lazy_exports

_EXPORTS = {
    "DataConfig": "config", "RemoteOptions": "config", "is_url": "config",
    "TokenFiles": "token_files",
    "Batches": "order", "BatchSplit": "order", "global_indices": "order", "row_positions": "order",
    "Prefetcher": "prefetch",
    "RemoteStore": "remote",
    "Tokenizer": "tokenizer", "tokenizer_path": "tokenizer",
    "ensure_stdlib_corpus": "quickstart",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
