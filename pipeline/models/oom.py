"""Running a model over a batch where some rows may fail: on CUDA out-of-memory split the batch and
retry; on other errors retry once, then isolate the failing rows (they become rows with a status)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.schema import MODEL_ERROR, MODEL_OOM

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


@dataclass(frozen=True)
class RowFailure:
    """The result of a row the model failed on: its status (`model_error`, `model_oom`) and a short message."""

    status: str
    message: str


def run_rows(fn: Callable[[Any], list[T]], items: Any, retried: bool = False) -> list[T | RowFailure]:
    """fn(items) (one result per item), where a failure costs only the rows it belongs to: an OOM splits
    the batch (`split_on_oom`) and a single row that still does not fit is `model_oom`; any other error
    runs the batch once more (a transient fault), then splits it in halves down to the rows that fail,
    which are `model_error` while the rest go on."""
    try:
        return [r for r in split_on_oom(fn, items)]
    except Exception as e:  # noqa: BLE001 - isolating the failing rows is the point; the rest must go on
        if len(items) == 1:
            status = MODEL_OOM if is_oom(e) else MODEL_ERROR
            if status == MODEL_ERROR and not retried:
                return run_rows(fn, items, True)
            log.warning("%s on one row: %s", status, _short(e))
            return [RowFailure(status, _short(e))]
        if not retried and not is_oom(e):
            log.warning("model stage failed on a batch of %d (%s); running it once more", len(items), _short(e))
            return run_rows(fn, items, True)
        half = len(items) // 2
        return run_rows(fn, items[:half], True) + run_rows(fn, items[half:], True)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"
