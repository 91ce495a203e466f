"""What every model stage does with its rows: pick the ok ones, put results back in their places."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from pipeline.models.oom import RowFailure, run_rows
from pipeline.schema import CAPTIONS, ERROR, OK, STATUS, TEXT


def ok_rows(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the rows whose status is ok: the only rows a model stage touches."""
    return np.flatnonzero(batch[STATUS] == OK)


def scatter(n: int, rows: Iterable[Any], values: Iterable[Any], fill: Any = None) -> np.ndarray:
    """An object column of n rows: `values` at `rows`, `fill` (a fresh copy of a list fill) elsewhere."""
    col = np.empty(n, dtype=object)
    col[:] = [list(fill) for _ in range(n)] if isinstance(fill, list) else [fill] * n
    for i, v in zip(rows, values, strict=True):
        col[i] = v
    return col


def texts_of(batch: dict[str, np.ndarray], rows: np.ndarray) -> tuple[list[list[str]], list[bool]]:
    """Per row: [alt-text (if any)] + candidates; and whether the first text is the alt-text."""
    texts, has_text = [], []
    for i in rows:
        alt = batch[TEXT][i]
        cands = list(batch[CAPTIONS][i]) if CAPTIONS in batch and batch[CAPTIONS][i] is not None else []
        has = isinstance(alt, str) and alt.strip() != ""
        texts.append(([alt] if has else []) + cands)
        has_text.append(has)
    return texts, has_text


def take(values: Any, ix: np.ndarray) -> Any:
    """values[ix]; the values themselves when ix is all of them in order (no copy of a whole pixel batch)."""
    return values if len(ix) == len(values) and (ix == np.arange(len(values))).all() else values[ix]


# Fault injection for the model-failure and retry tests: with CAPFILT_FAILPOINT_MODEL_ERROR=<marker> in the
# environment, a row whose alt-text starts with <marker> makes every model call that holds it raise. Off
# unless that variable is set.
_MODEL_ERROR_MARKER = os.environ.get("CAPFILT_FAILPOINT_MODEL_ERROR", "")


def run_model(batch: dict[str, np.ndarray], rows: np.ndarray,
              fn: Callable[[np.ndarray], list[Any]]) -> tuple[np.ndarray, list[Any]]:
    """`fn(ix)` → one result per position in `rows` (ix indexes `rows`), with failures isolated to their
    rows (models/oom.run_rows): those get the failure's status and error here. → (the rows that
    succeeded, their results)."""
    if _MODEL_ERROR_MARKER and TEXT in batch:
        poisoned = {j for j, i in enumerate(rows) if str(batch[TEXT][i] or "").startswith(_MODEL_ERROR_MARKER)}
        if poisoned:
            model = fn

            def fn(ix: np.ndarray) -> list[Any]:
                if poisoned & set(ix.tolist()):
                    raise RuntimeError("failpoint: a model error on this row (CAPFILT_FAILPOINT_MODEL_ERROR)")
                return model(ix)

    results = run_rows(fn, np.arange(len(rows))) if len(rows) else []
    failed = [j for j, r in enumerate(results) if isinstance(r, RowFailure)]
    if not failed:
        return rows, results
    batch[STATUS], batch[ERROR] = batch[STATUS].astype(object), batch[ERROR].astype(object)
    for j in failed:
        batch[STATUS][rows[j]], batch[ERROR][rows[j]] = results[j].status, results[j].message
    keep = [j for j in range(len(rows)) if j not in set(failed)]
    return rows[keep], [results[j] for j in keep]
