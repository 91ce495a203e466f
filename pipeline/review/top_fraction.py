"""Top-fraction selection (DataComp-style) over a whole run, in bounded memory.

Each ok row's score is its best text's score. The k-th largest score is found by a radix select over
the order-preserving uint32 image of the float32 scores: two passes of a 65,536-bin histogram, reading
only the score columns of the committed files — never every score at once. Then each shard's file is
rewritten with `keep`/`keep_text` (score ≥ the cut); a `_selection.json` marker makes this idempotent.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io.storage import get_fs, join, unstrip
from pipeline.io.writer import write_atomic
from pipeline.schema import CAPTION, CAPTION_SCORES, HEAD_SCORES, KEEP, KEEP_TEXT, OK, STATUS, TEXT_SCORE

log = logging.getLogger(__name__)
SELECTION = "_selection.json"


def float_keys(x: np.ndarray) -> np.ndarray:
    """float32 → uint32 with the same order (negatives flipped, positives' sign bit set)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return np.where(bits & 0x80000000, ~bits, bits | 0x80000000).astype(np.uint32)


def _from_key(k: int) -> float:
    bits = np.uint32(k & 0x7FFFFFFF) if k & 0x80000000 else np.uint32(~k & 0xFFFFFFFF)
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def kth_largest(chunks: Callable[[], Iterator[np.ndarray]], k: int) -> float:
    """The k-th largest value (1-based) of the float32 values `chunks()` yields; two passes, O(2^16) memory."""
    prefix, remaining = 0, k
    for shift, mask_hi in ((16, 0), (0, 0xFFFF0000)):
        hist = np.zeros(1 << 16, dtype=np.int64)
        for c in chunks():
            keys = float_keys(c)
            if mask_hi:
                keys = keys[(keys & mask_hi) == prefix]
            hist += np.bincount((keys >> shift) & 0xFFFF, minlength=1 << 16)
        above = np.cumsum(hist[::-1])  # above[j]: values in the top j+1 bins
        j = int(np.searchsorted(above, remaining))
        bin_ = (1 << 16) - 1 - j
        remaining -= int(above[j - 1]) if j > 0 else 0
        prefix |= bin_ << shift
    return _from_key(prefix)


def row_scores(table: pa.Table) -> np.ndarray:
    """Best score per row (alt-text or any candidate); NaN for rows not ok or without scores."""
    out = np.full(table.num_rows, np.nan, dtype=np.float32)
    status = table[STATUS].to_pylist()
    text = table[TEXT_SCORE].to_pylist()
    caps = table[CAPTION_SCORES].to_pylist()
    for i in range(table.num_rows):
        if status[i] != OK:
            continue
        scores = [s for s in [text[i], *(caps[i] or [])] if s is not None]
        if scores:
            out[i] = max(scores)
    return out


def _fingerprint(fs: Any, pattern: str) -> tuple[list[str], str]:
    """The captions files and a hash of what they are now (name, size, ETag or mtime): any rewrite of a
    file since the cut was found (a resume, `capfilt retry`) changes it."""
    found = fs.glob(pattern, detail=True)
    ids = [(f, i.get("size"), str(i.get("ETag") or i.get("mtime") or i.get("LastModified"))) for f, i in sorted(found.items())]
    return sorted(found), hashlib.sha1(json.dumps(ids, default=str).encode()).hexdigest()[:16]


def finish_top_fraction(output: str, fraction: float, digest: str, options: dict[str, Any],
                        compression: str = "zstd", curate: Any = None) -> dict[str, Any]:
    """Sets keep/keep_text in every captions file from the global cut (a row that misses the `curate`
    thresholds is not kept whatever its score); returns what run.json records."""
    from pipeline.stages.score import curate_pass

    fs, path = get_fs(join(output, "captions"), options)
    pattern = path.rstrip("/") + "/*.parquet"
    files, now = _fingerprint(fs, pattern)
    marker_uri = join(output, SELECTION)
    mfs, mpath = get_fs(marker_uri, options)
    if mfs.exists(mpath):
        marker = json.loads(mfs.cat_file(mpath))
        if marker.get("config_digest") == digest and marker.get("files_digest") == now:
            return {"selection": marker}

    def chunks() -> Iterator[np.ndarray]:
        for f in files:
            t = pq.read_table(unstrip(fs, f), columns=[STATUS, TEXT_SCORE, CAPTION_SCORES], filesystem=fs)
            s = row_scores(t)
            yield s[~np.isnan(s)]

    n_scored = sum(len(c) for c in chunks())
    k = round(fraction * n_scored)
    cut = kth_largest(chunks, k) if k > 0 else float("inf")
    kept = 0
    for f in files:
        t = pq.read_table(unstrip(fs, f), filesystem=fs)
        s = row_scores(t)
        passes = curate_pass({c: t[c].to_pylist() for c in (STATUS, *HEAD_SCORES) if c in t.column_names}, curate)
        if passes is None:
            passes = np.ones(t.num_rows, dtype=bool)
        keep = pa.array([None if np.isnan(v) else bool(v >= cut and p) for v, p in zip(s, passes, strict=True)], pa.bool_())
        text = t[TEXT_SCORE].to_numpy(zero_copy_only=False).astype(np.float32)
        keep_text = pa.array([None if np.isnan(v) else bool(v >= cut and p) for v, p in zip(text, passes, strict=True)],
                             pa.bool_())
        ok = pc.equal(t[STATUS], OK)
        keep_text = pc.if_else(ok, keep_text, pa.nulls(t.num_rows, pa.bool_()))
        # Nothing passes in a row that is not kept, so it has no chosen caption (its candidates and
        # their scores stay in `captions` / `caption_scores`).
        caption = pc.if_else(pc.fill_null(keep, False), t[CAPTION], pa.nulls(t.num_rows, pa.string()))
        t = t.set_column(t.schema.get_field_index(CAPTION), CAPTION, caption)
        t = t.set_column(t.schema.get_field_index(KEEP), KEEP, keep)
        t = t.set_column(t.schema.get_field_index(KEEP_TEXT), KEEP_TEXT, keep_text)
        kept += int(pc.sum(pc.fill_null(keep, False)).as_py() or 0)
        buf = io.BytesIO()
        pq.write_table(t, buf, compression=compression)
        write_atomic(unstrip(fs, f), buf.getvalue(), options)
    marker = {"mode": "top_fraction", "fraction": fraction, "scored_rows": n_scored, "target_rows": k,
              "kept_rows": kept, "cut": cut, "files": len(files), "config_digest": digest,
              "files_digest": _fingerprint(fs, pattern)[1]}  # the files as this step left them
    write_atomic(marker_uri, json.dumps(marker).encode(), options)
    log.info("top_fraction: kept %d of %d scored rows (target %d, cut %.6f)", kept, n_scored, k, cut)
    return {"selection": marker}
