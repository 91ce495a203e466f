"""Running a model over a batch that may not fit: on CUDA out-of-memory, split the batch and retry."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def split_on_oom(fn: Callable[[Any], list[T]], items: Any) -> list[T]:
    """fn(items), or, when that runs out of GPU memory, fn on each half (recursively): a batch that is
    too big for the GPU costs time, never rows. A single item that still does not fit raises."""
    try:
        return fn(items)
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e) or len(items) <= 1:
            raise
        _free_cuda_cache()
        half = len(items) // 2
        log.warning("out of memory on a batch of %d: splitting it in two", len(items))
        return split_on_oom(fn, items[:half]) + split_on_oom(fn, items[half:])


def _free_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
