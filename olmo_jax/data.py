"""Training data read exactly as OLMo reads it (olmo_spec.md §5): token files, global order, per-process rows,
and a prefetching iterator."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """OLMo's DataConfig fields for memmap token files, plus how we prefetch."""

    paths: tuple[str, ...] = ()  # token files, read in this order (OLMo: data.paths)
    memmap_dtype: str = "uint16"  # OLMo: data.memmap_dtype (uint32 for vocabularies above 65,536)
    seed: int | None = None  # OLMo: data.seed; None → the run's seed
    prefetch_depth: int = 8  # batches built ahead by the background thread
