"""`capfilt dedup OUT`: exact, perceptual and semantic duplicates among a finished run's rows → OUT/dedup/.

Every row of the run's committed files gets one row in `OUT/dedup/<name>.parquet` (the run's file of the
same name, in its order): `key`, `source`, `duplicate_of` and `duplicate_of_source` (the row of its
group that stays), `method` (`exact`, `perceptual`, `semantic`; null: not a duplicate) and `similarity`
(1 for exact, 1 − bits/64 for perceptual, the cosine for semantic) of the match that found it (which may
be another duplicate of the group: chains are followed to the row that stays), and `keep`: the run's own
keep (true where the run has none; false for a row that is not ok) and not a duplicate. Methods apply in
that order, each to the rows the earlier ones left; in a group the row the run kept stays before one it
did not, then `dedup.keep` decides (semantic) or the input's order (hashes).

Where the work runs: the hashes (`sha256`, `phash`: tens of bytes a row) are grouped on the driver; the
embeddings never are. Semantic dedup fits faiss k-means on a bounded sample (`dedup.sample`), then Ray
Data reads each file's embeddings in a task, assigns them to centroids (map_batches), and runs each
cluster's pass in a task of its own (groupby cluster → map_groups): no process holds more than a file or
a cluster of embeddings. Only the small per-row results come back to the driver.

Exactly once and resumable: each part is written atomically with a marker (`OUT/dedup/_committed/`)
naming the dedup config and the run's files it was computed from; a rerun with both unchanged skips the
parts already written and writes the rest (the method is deterministic: seeded, inputs in order).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import Config, DedupConfig
from pipeline.dedup.hashes import duplicates_by_group, perceptual_groups, phash_ints, popcount
from pipeline.io.storage import get_fs, join
from pipeline.io.writer import COMMITTED, committed_shards, write_atomic
from pipeline.schema import IMAGE_EMBEDDING, KEEP, KEY, OK, PHASH, SHA256, SOURCE, STATUS

log = logging.getLogger("capfilt")

DEDUP = "dedup"
SUMMARY = "_dedup.json"

METHODS = ("exact", "perceptual", "semantic")

DEDUP_SCHEMA = pa.schema([
    pa.field(KEY, pa.string(), nullable=False),
    pa.field(SOURCE, pa.string(), nullable=False),
    pa.field("duplicate_of", pa.string()),
    pa.field("duplicate_of_source", pa.string()),
    pa.field("method", pa.string()),
    pa.field("similarity", pa.float32()),
    pa.field(KEEP, pa.bool_(), nullable=False),
])


class DedupError(ValueError):
    """OUT cannot be deduplicated as asked: the message says why and what to run."""


def _columns_of(fs: Any, root: str, table: str) -> list[str]:
    """The columns of a table of OUT (its first file's), or none when it has no file."""
    files = fs.glob(join(root, table) + "/*.parquet")
    if not files:
        return []
    with fs.open(files[0]) as f:
        return list(pq.read_schema(f).names)


def _rows_table(output: str, fs: Any, root: str) -> str:
    """The run's table that holds every row with its status: `captions` (caption, clean, prompts) or
    `embeddings` (embed)."""
    for name in ("captions", "embeddings"):
        if STATUS in _columns_of(fs, root, name):
            return name
    raise DedupError(f"dedup: {output!r} has no captions/ or embeddings/ table with a status column: "
                     "not the output of a finished capfilt run")


def _digest(cfg: DedupConfig, names: list[str], markers: dict[str, dict[str, Any]]) -> str:
    """The dedup settings and the run's committed files (names and their markers' row counts and runs)."""
    files = sorted((m["name"], m.get("rows"), m.get("run_id")) for m in markers.values())
    return hashlib.sha256(json.dumps([asdict(cfg), names, files], sort_keys=True, default=str).encode()).hexdigest()[:16]


def dedup_output(output: str, cfg: Config) -> dict[str, Any]:
    """Runs `capfilt dedup` over OUT; returns what OUT/dedup/_dedup.json records."""
    began = time.monotonic()
    d, options = cfg.dedup, cfg.storage
    fs, root = get_fs(output, options)
    markers = committed_shards(output, options)
    if not markers:
        raise DedupError(f"dedup: {output!r} holds no committed shards (no {COMMITTED}/): run a job into it first")
    names = sorted(m["name"] for m in markers.values())
    table = _rows_table(output, fs, root)
    has_embeddings = IMAGE_EMBEDDING in _columns_of(fs, root, "embeddings")
    semantic = has_embeddings if d.semantic is None else d.semantic
    if semantic and not has_embeddings:
        raise DedupError(f"dedup: dedup.semantic needs the image embeddings of {output!r} (OUT/embeddings/ with "
                         "image_embedding: run `embed`, or `clean --embed`); or set dedup.semantic=false")
    digest = _digest(d, names, markers)
    done = done_parts(output, options, digest)
    todo = [n for n in names if n not in done]
    if not todo:
        log.info("dedup: all %d parts of %s are done already (same settings, same run files)", len(names), output)
        return json.loads(fs.cat_file(join(root, DEDUP, SUMMARY)))

    t = time.monotonic()
    cols = _read_columns(fs, root, table, names, d)
    seconds: dict[str, float] = {"read": time.monotonic() - t}
    n = len(cols[KEY])
    log.info("dedup: %d rows in %d files of %s/%s", n, len(names), output, table)
    dup_of = np.full(n, -1, dtype=np.int64)
    method = np.zeros(n, dtype=np.int8)  # METHODS[i - 1]; 0: none
    similarity = np.full(n, np.nan, dtype=np.float32)
    ok = cols[STATUS]
    rank = np.lexsort((np.arange(n), ~cols["run_keep"]))  # the run's kept rows first, then the input's order
    position = np.empty(n, np.int64)
    position[rank] = np.arange(n)

    if d.exact:
        t = time.monotonic()
        sha = cols[SHA256]
        valid = ok & np.array([s is not None for s in sha])
        groups = np.unique(np.where(valid, sha, ""), return_inverse=True)[1]
        found = duplicates_by_group(groups, position, valid)
        hit = found >= 0
        dup_of[hit], method[hit], similarity[hit] = found[hit], 1, 1.0
        seconds["exact"] = time.monotonic() - t
    if d.perceptual:
        t = time.monotonic()
        values, has = phash_ints(list(cols[PHASH]))
        valid = ok & has & (dup_of < 0)
        distinct, inverse = np.unique(values[valid], return_inverse=True)
        groups = np.full(n, -1, dtype=np.int64)
        groups[valid] = perceptual_groups(distinct, d.phash_distance)[inverse]
        found = duplicates_by_group(groups, position, valid)
        hit = found >= 0
        bits = popcount(values[hit] ^ values[found[hit]])
        dup_of[hit], method[hit] = found[hit], 2
        similarity[hit] = 1.0 - bits / 64.0
        seconds["perceptual"] = time.monotonic() - t
    clusters = candidates_n = 0
    if semantic:
        t = time.monotonic()
        from pipeline.dedup.cluster import semantic_pass
        from pipeline.runner import ray_start

        candidates = ok & (dup_of < 0)
        candidates_n = int(candidates.sum())
        connected = ray_start.init_ray(cfg)
        seconds["ray_start"] = time.monotonic() - t
        try:
            from pipeline.runner import ray_adapter

            ray_adapter.configure(cfg)
            found, sims, clusters = semantic_pass(fs, root, names, cols, candidates, d, options, seconds)
        finally:
            if connected:
                ray_start.shutdown(cfg)
        hit = (found >= 0) & candidates
        dup_of[hit], method[hit], similarity[hit] = found[hit], 3, sims[hit]
        seconds["semantic"] = time.monotonic() - t

    dup_of = _roots(dup_of)
    keep = ok & cols["run_keep"] & (dup_of < 0)
    t = time.monotonic()
    counts = _write_parts(output, options, todo, names, cols, dup_of, method, similarity, keep, digest)
    seconds["write"] = time.monotonic() - t
    summary = {"output": output, "table": table, "rows": n, "files": len(names), "config": asdict(d),
               "semantic": semantic, "clusters": clusters, "semantic_candidates": candidates_n, "config_digest": digest,
               "duplicates": {m: int(np.sum(method == i + 1)) for i, (m, on) in
                              enumerate(zip(METHODS, (d.exact, d.perceptual, semantic), strict=True)) if on},
               "kept": int(keep.sum()), "run_kept": int((ok & cols["run_keep"]).sum()), "ok": int(ok.sum()),
               "parts_written": len(todo), "parts_done_before": len(done), "seconds": round(time.monotonic() - began, 3),
               "stage_seconds": {k: round(v, 3) for k, v in seconds.items()}, "written_rows": counts}
    write_atomic(join(output, DEDUP, SUMMARY), json.dumps(summary, indent=2).encode(), options)
    return summary


def _roots(dup_of: np.ndarray) -> np.ndarray:
    """Each duplicate pointed at the row of its group that stays: a match may be a duplicate itself (an
    exact copy matched perceptually, SemDeDup's item matched to one removed before it)."""
    out = dup_of.copy()
    while True:
        hop = out >= 0
        nxt = np.where(hop, out[np.clip(out, 0, None)], -1)
        chained = hop & (nxt >= 0)
        if not chained.any():
            return out
        out[chained] = nxt[chained]


def _read_columns(fs: Any, root: str, table: str, names: list[str], d: DedupConfig) -> dict[str, Any]:
    """What the driver keeps per row, compactly (tens of bytes a row): key and source as Arrow arrays, the
    ok and kept masks, each row's file, and what the methods that are on need (the hashes; the score of
    `dedup.keep: score`)."""
    import pyarrow.compute as pc

    wanted = [KEY, SOURCE, STATUS, KEEP, *([SHA256] if d.exact else []), *([PHASH] if d.perceptual else []),
              *([d.score_column] if d.keep == "score" else [])]
    parts: dict[str, list[Any]] = {c: [] for c in (*wanted, "file")}
    for i, name in enumerate(names):
        with fs.open(join(root, table, f"{name}.parquet")) as f:
            pf = pq.ParquetFile(f)
            present = [c for c in wanted if c in pf.schema_arrow.names]
            t = pf.read(columns=present)
        for c in wanted:
            parts[c].append(t[c].combine_chunks() if c in present else pa.nulls(t.num_rows))
        parts["file"].append(np.full(t.num_rows, i, dtype=np.int32))
    cols: dict[str, Any] = {"file": np.concatenate(parts["file"]) if names else np.array([], np.int32)}
    for c in (KEY, SOURCE):
        cols[c] = pa.concat_arrays([a.cast(pa.string()) for a in parts[c]])
    ok = pc.fill_null(pc.equal(pa.concat_arrays([a.cast(pa.string()) for a in parts[STATUS]]), OK), False)
    cols[STATUS] = ok.to_numpy(zero_copy_only=False)
    kept = pc.fill_null(pa.concat_arrays([a.cast(pa.bool_()) for a in parts[KEEP]]), True)  # no keep: every ok row
    cols["run_keep"] = kept.to_numpy(zero_copy_only=False) & cols[STATUS]  # also what stays first in a group
    for c in (SHA256, PHASH):
        if c in parts:
            cols[c] = pa.concat_arrays([a.cast(pa.string()) for a in parts[c]]).to_numpy(zero_copy_only=False)
    if d.keep == "score":
        cols[d.score_column] = pa.concat_arrays([a.cast(pa.float64()) for a in parts[d.score_column]]).to_numpy(
            zero_copy_only=False)
    return cols


def done_parts(output: str, options: dict[str, Any], digest: str) -> dict[str, dict[str, Any]]:
    """The markers under OUT/dedup/_committed/ of parts written with these settings: name → marker."""
    fs, path = get_fs(join(output, DEDUP, COMMITTED), options)
    try:
        listed = fs.glob(path.rstrip("/") + "/*.json")
    except FileNotFoundError:
        return {}
    markers = [json.loads(data) for data in (fs.cat(listed) if listed else {}).values()]
    return {m["name"]: m for m in markers if m.get("config_digest") == digest}


def _write_parts(output: str, options: dict[str, Any], todo: list[str], names: list[str], cols: dict[str, Any],
                 dup_of: np.ndarray, method: np.ndarray, similarity: np.ndarray, keep: np.ndarray,
                 digest: str) -> dict[str, int]:
    """Each part to do: its rows in the run file's order, written atomically, then its marker."""
    index = {name: i for i, name in enumerate(names)}
    has = dup_of >= 0
    methods = pa.array([None, *METHODS], pa.string())
    written = {}
    for name in todo:
        rows = np.flatnonzero(cols["file"] == index[name])
        to = pa.array(np.where(has[rows], dup_of[rows], 0), mask=~has[rows])
        part = pa.table({KEY: cols[KEY].take(rows), SOURCE: cols[SOURCE].take(rows),
                         "duplicate_of": cols[KEY].take(to), "duplicate_of_source": cols[SOURCE].take(to),
                         "method": methods.take(pa.array(method[rows].astype(np.int32))),
                         "similarity": pa.array(similarity[rows], pa.float32(), mask=~has[rows]),
                         KEEP: pa.array(keep[rows], pa.bool_())}, schema=DEDUP_SCHEMA)

        def write(f: Any, part: pa.Table = part) -> None:
            pq.write_table(part, f, compression="zstd")

        write_atomic(join(output, DEDUP, f"{name}.parquet"), write, options)
        counts = {"rows": int(len(rows)), "duplicates": int(has[rows].sum()), "kept": int(keep[rows].sum())}
        write_atomic(join(output, DEDUP, COMMITTED, f"{name}.json"),
                     json.dumps({"name": name, "config_digest": digest, **counts}).encode(), options)
        written[name] = counts["rows"]
    return {"parts": len(written), "rows": sum(written.values())}
