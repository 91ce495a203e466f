"""What every model stage does with its rows: pick the ok ones, put results back in their places."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from pipeline.schema import CAPTIONS, OK, STATUS, TEXT


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
