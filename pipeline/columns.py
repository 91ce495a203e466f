"""Arrow table ⇄ dict of numpy columns, without the lossy null handling of Ray's numpy batches.

Stages work on `dict[str, np.ndarray]`: strings and lists as object arrays with None for null,
fixed-shape tensors (pixels, embeddings) as n-d arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.schema import COLUMN_TYPES, EMBEDDINGS, PIXELS


def to_numpy(table: pa.Table) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        chunked = table[name]
        if _as_objects(chunked):
            # Read chunk by chunk: combining the chunks first would copy the column (a block's images, ~10 MB,
            # when a reader's last rows arrive as a chunk of their own) only to read it once
            arr = np.empty(len(chunked), dtype=object)
            arr[:] = chunked.to_pylist()
            out[name] = arr
            continue
        col = chunked.combine_chunks() if chunked.num_chunks != 1 else chunked.chunk(0)
        if isinstance(col.type, pa.ExtensionType):  # Ray's tensor type
            out[name] = col.to_numpy()
        elif pa.types.is_fixed_size_list(col.type):  # embeddings: rows of one n-d array, None for null
            mat, valid = fixed_size_list_to_numpy(col)
            arr = np.empty(len(col), dtype=object)
            arr[:] = [mat[i] if valid[i] else None for i in range(len(col))]
            out[name] = arr
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def _as_objects(col: pa.ChunkedArray) -> bool:
    """Whether a column becomes an object array of Python values: lists, strings, bytes, nulls, and any
    other column with a null (numpy has no null)."""
    t = col.type
    if isinstance(t, pa.ExtensionType) or pa.types.is_fixed_size_list(t):
        return False
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_string(t) or pa.types.is_binary(t)
            or pa.types.is_null(t) or pa.types.is_large_string(t) or col.null_count > 0)


def fixed_size_list_to_numpy(col: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed-size list column (embeddings) → ((n, d) matrix, (n,) validity); null rows hold whatever
    Arrow stored for them (zeros as we write them)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    d = col.type.list_size
    flat = col.values.slice(col.offset * d, len(col) * d).to_numpy(zero_copy_only=False)
    return flat.reshape(len(col), d), col.is_valid().to_numpy(zero_copy_only=False)


def _embedding(values: np.ndarray) -> pa.Array:
    """Object array of 1-d vectors (None for null) → FixedSizeListArray in the vectors' dtype."""
    valid = np.array([v is not None for v in values], dtype=bool)
    if not valid.any():
        return pa.nulls(len(values))
    first = next(v for v in values if v is not None)
    mat = np.zeros((len(values), len(first)), dtype=first.dtype)
    if valid.any():
        mat[valid] = np.stack([v for v in values if v is not None])
    return pa.FixedSizeListArray.from_arrays(pa.array(mat.ravel()), len(first), mask=pa.array(~valid))


def _column(name: str, values: np.ndarray, tensor: Callable[[np.ndarray], pa.Array] | None) -> pa.Array:
    if isinstance(values, np.ndarray) and values.dtype != object and values.ndim > 1:
        if tensor is None:
            raise TypeError(f"column {name!r}: an n-d array needs a tensor type (the Ray adapter gives Ray's)")
        return tensor(values)
    if name.startswith(PIXELS) and values.dtype == object and tensor is not None:
        return tensor(values)  # images of their own sizes each (a dynamic decode target): a ragged tensor
    if name in EMBEDDINGS:
        return _embedding(values)
    typ = COLUMN_TYPES.get(name)
    seq: Any = values.tolist() if isinstance(values, np.ndarray) and values.dtype == object else values
    return pa.array(seq, type=typ) if typ is not None else pa.array(seq)


def to_arrow(batch: dict[str, np.ndarray], tensor: Callable[[np.ndarray], pa.Array] | None = None) -> pa.Table:
    """Columns → a table in our column types; `tensor` makes the Arrow column of an n-d array (pixels),
    which only travel between stages (the Ray adapter passes Ray's tensor type)."""
    return pa.table({name: _column(name, values, tensor) for name, values in batch.items()})
