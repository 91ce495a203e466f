"""Score sketches: a shard's scores summarised at its commit, merged later to find thresholds and quantiles
without reading every row.

A shard's sketch of a score column is its sorted values when it has at most `POINTS` of them (exact),
else `POINTS` order statistics at evenly spaced ranks, each standing for n/POINTS rows. Merged over
shards, a count of the scores at or above a threshold is off by at most ceil(n/POINTS) rows per shard
whose sketch is not exact (`Merged.error_rows`), and by none where every shard is exact. (A mergeable
sketch with this bound in a few lines of numpy; the KLL/t-digest libraries would add a dependency for a
bound no tighter at this size.)

Sketches travel in the Arrow schema metadata of each committed file (`capfilt` key): reading a file's
footer gets them, and anything that rewrites a file with its schema (top_fraction) keeps them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import CAPTION_SCORES, HEAD_SCORES, SCORE_COLUMNS, TEXT_SCORE

POINTS = 1000
METADATA_KEY = b"capfilt"
SKETCHED = (TEXT_SCORE, CAPTION_SCORES, *(c for pair in SCORE_COLUMNS.values() for c in pair), *HEAD_SCORES)


def values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The non-null scores of a float column or a list-of-floats column (every candidate's), as float64."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or pa.types.is_fixed_size_list(column.type):
        column = pc.list_flatten(column)
    column = pc.drop_null(column)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def sketch(x: np.ndarray, points: int = POINTS) -> dict[str, Any]:
    """{"n": count, "points": sorted values (all of them when n <= points, else order statistics)}."""
    x = np.sort(x[~np.isnan(x)])
    n = len(x)
    if n > points:
        x = x[np.ceil((np.arange(points) + 1) * n / points).astype(np.int64) - 1]
    # 9 significant digits: a float32 score comes back exactly (Merged reads points as float32), so a
    # threshold taken from a sketch compares with the stored scores as the scores themselves would.
    return {"n": n, "points": [float(f"{v:.9g}") for v in x]}


def table_sketches(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {c: sketch(values(table[c])) for c in SKETCHED if c in table.column_names}


def with_sketches(schema: pa.Schema, sketches: dict[str, Any], run_id: str | None = None) -> pa.Schema:
    meta = dict(schema.metadata or {})
    meta[METADATA_KEY] = json.dumps({"run_id": run_id, "sketches": sketches}).encode()
    return schema.with_metadata(meta)


def file_metadata(schema: pa.Schema) -> dict[str, Any] | None:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else None


@dataclass
class Merged:
    """A score column's sketches over several shards."""

    values: np.ndarray  # descending
    weights: np.ndarray  # rows each value stands for
    n: int
    error_rows: int  # the most a count from this sketch can be off by

    @classmethod
    def of(cls, sketches: Iterable[dict[str, Any]]) -> Merged:
        vals, wts, n, err = [], [], 0, 0
        for s in sketches:
            pts = np.asarray(s["points"], dtype=np.float32).astype(np.float64)
            if not len(pts):
                continue
            n += s["n"]
            vals.append(pts)
            wts.append(np.full(len(pts), s["n"] / len(pts)))
            if s["n"] > len(pts):
                err += math.ceil(s["n"] / len(pts))
        if not vals:
            return cls(np.zeros(0), np.zeros(0), 0, 0)
        v, w = np.concatenate(vals), np.concatenate(wts)
        order = np.argsort(-v, kind="stable")
        return cls(v[order], w[order], n, err)

    def at_least(self, threshold: float) -> float:
        """How many scores are >= threshold (exact where every shard's sketch is)."""
        return float(self.weights[self.values >= threshold].sum())

    def below(self, threshold: float) -> float:
        """How many scores are < threshold (a score that keeps below its threshold: NSFW)."""
        return float(self.weights[self.values < threshold].sum())

    def threshold_for(self, keep: float) -> float | None:
        """The largest threshold that keeps at least round(keep * n) scores (`score >= threshold`)."""
        if not self.n or keep <= 0:
            return None
        k = max(1, round(keep * self.n))
        cum = np.cumsum(self.weights)
        i = min(int(np.searchsorted(cum, k - 1e-9)), len(self.values) - 1)
        return float(self.values[i])

    def threshold_below(self, keep: float) -> float | None:
        """The smallest threshold that keeps at least round(keep * n) scores (`score < threshold`): the
        float32 just above the k-th lowest score, so that a float32 score compares as the count says."""
        if not self.n or keep <= 0:
            return None
        k = max(1, round(keep * self.n))
        asc_v, cum = self.values[::-1], np.cumsum(self.weights[::-1])
        i = min(int(np.searchsorted(cum, k - 1e-9)), len(asc_v) - 1)
        return float(np.nextafter(np.float32(asc_v[i]), np.float32(np.inf)))

    def quantile(self, q: float) -> float | None:
        """The inverted-CDF quantile (numpy's `method="inverted_cdf"`): the smallest value whose share of
        the scores at or below it reaches q."""
        if not self.n:
            return None
        asc_v, asc_w = self.values[::-1], self.weights[::-1]
        cum = np.cumsum(asc_w)
        i = min(int(np.searchsorted(cum, q * self.n - 1e-9)), len(asc_v) - 1)
        return float(asc_v[i])
