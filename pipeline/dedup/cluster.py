"""Semantic dedup on the cluster: each file's embeddings read in a task of their own, k-means fitted on a
bounded sample (faiss, dedup/semantic.py), every embedding assigned to its centroid, and each cluster's pass
in a task of its own (the Ray Data wiring: ray_adapter.ClusterStages). The driver holds the sample and the
per-row results (a position, a cosine and the position it duplicates), never the embeddings."""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import DedupConfig
from pipeline.dedup.semantic import assign, cluster_duplicates, fit_kmeans, ranking
from pipeline.io.storage import get_fs, join, unstrip
from pipeline.schema import IMAGE_EMBEDDING

log = logging.getLogger("capfilt")

PER_CLUSTER = 5000  # dedup.clusters null: one cluster per this many embeddings (SemDeDup: ~8,800 on LAION-440M)
CLUSTERS_PER_BUCKET = 8  # clusters a task passes at once: ~40,000 embeddings by default, whatever the input's size
WORK = "_work"  # OUT/dedup/_work/: the assigned embeddings by bucket, while the pass runs
POS, EMB, CLUSTER, CSIM, PREFERRED, SCORE = "pos", "embedding", "cluster", "centroid_sim", "preferred", "score"


def vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column without nulls → (n, d) float32."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    d = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)


class ReadEmbeddings:
    """A file's rows that take part (the `wanted` mask) and have an embedding → pos, embedding (unit
    float32), preferred, score: one task per file (batch_size=1 over the file list)."""

    def __init__(self, shared: tuple[np.ndarray, np.ndarray, np.ndarray], options: dict[str, Any]):
        (self.wanted, self.preferred, self.score), self.options = shared, options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {POS: [], EMB: [], PREFERRED: [], SCORE: []}
        for uri, offset in zip(batch["uri"], batch["offset"], strict=True):
            fs, path = get_fs(str(uri), self.options)
            t = pq.read_table(fs.open(path), columns=[IMAGE_EMBEDDING])
            pos = np.arange(offset, offset + t.num_rows, dtype=np.int64)
            use = self.wanted[pos] & t[IMAGE_EMBEDDING].is_valid().to_numpy(zero_copy_only=False)
            unit = vectors(t[IMAGE_EMBEDDING].filter(pa.array(use)))
            # unit length again: float16 storage leaves a norm of 1 ± 1e-4, and copies must reach cosine 1
            unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
            for name, values in ((POS, pos[use]), (EMB, unit), (PREFERRED, self.preferred[pos[use]]),
                                 (SCORE, self.score[pos[use]])):
                out[name].append(values)
        return {name: np.concatenate(parts) for name, parts in out.items()}


class Picked:
    """Only the rows of the k-means sample."""

    def __init__(self, picked: np.ndarray):
        self.picked = picked

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keep = self.picked[batch[POS]]
        return {POS: batch[POS][keep], EMB: np.asarray(batch[EMB])[keep]}


class AssignAndSpill:
    """Each embedding's nearest centroid, then the rows written to their cluster's bucket (cluster mod
    buckets) under the work folder, a file per bucket per task: a bucket is later read whole by one task,
    and its size does not grow with the input (the clusters, and so the buckets, do)."""

    def __init__(self, state: tuple[np.ndarray, str, int, dict[str, Any]]):
        self.centroids, self.work, self.buckets, self.options = state

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import uuid

        from pipeline.io.writer import write_atomic

        emb = np.asarray(batch[EMB], dtype=np.float32)
        clusters, csim = assign(emb, self.centroids)
        bucket = clusters % self.buckets
        for b in np.unique(bucket):
            rows = np.flatnonzero(bucket == b)
            table = pa.table({POS: batch[POS][rows], CLUSTER: clusters[rows], CSIM: csim[rows],
                              PREFERRED: batch[PREFERRED][rows], SCORE: batch[SCORE][rows],
                              EMB: pa.FixedSizeListArray.from_arrays(pa.array(emb[rows].astype(np.float16).ravel()),
                                                                     emb.shape[1])})

            def write(f: Any, table: pa.Table = table) -> None:
                pq.write_table(table, f, compression="none")

            write_atomic(join(self.work, f"b{int(b):05d}", f"{uuid.uuid4().hex}.parquet"), write, self.options)
        return {"rows": np.array([len(emb)])}


def bucket_pass(strategy: str, eps: float, work: str, options: dict[str, Any],
                batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A bucket's rows read whole, and each of its clusters' pass (cluster_pass) → pos, similarity,
    duplicate_of."""
    out: dict[str, list[np.ndarray]] = {POS: [], "similarity": [], "duplicate_of": []}
    for b in batch["bucket"]:
        fs, path = get_fs(join(work, f"b{int(b):05d}"), options)
        files = sorted(fs.glob(path.rstrip("/") + "/*.parquet")) if fs.exists(path) else []
        if not files:
            continue
        t = pa.concat_tables(pq.read_table(fs.open(f)) for f in files)
        emb = vectors(t[EMB])
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # stored as float16
        cols = {c: t[c].to_numpy(zero_copy_only=False) for c in (POS, CLUSTER, CSIM, PREFERRED, SCORE)}
        # by cluster, then by position: the bucket's files come in any order, and ties (exact copies rank
        # alike) go by position, so every run keeps the same rows
        order = np.lexsort((cols[POS], cols[CLUSTER]))
        starts = np.flatnonzero(np.r_[True, np.diff(cols[CLUSTER][order]) != 0])
        for rows in np.split(order, starts[1:]):
            r = cluster_pass(strategy, eps, {POS: cols[POS][rows], EMB: emb[rows], CSIM: cols[CSIM][rows],
                                             PREFERRED: cols[PREFERRED][rows], SCORE: cols[SCORE][rows]})
            for k in out:
                out[k].append(r[k])
    if not out[POS]:
        return {POS: np.zeros(0, np.int64), "similarity": np.zeros(0, np.float32), "duplicate_of": np.zeros(0, np.int64)}
    return {k: np.concatenate(v) for k, v in out.items()}


def cluster_pass(strategy: str, eps: float, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One cluster: its items ranked (dedup.keep), each one's highest cosine to an item ranked before it
    → pos, similarity, duplicate_of (a position, -1: stays)."""
    emb = np.asarray(batch[EMB], dtype=np.float32)
    score = batch[SCORE].astype(np.float64) if strategy == "score" else None
    order = ranking(strategy, batch[CSIM], score, batch[PREFERRED].astype(bool))
    sims, of = cluster_duplicates(emb, order, eps)
    pos = batch[POS]
    return {POS: pos, "similarity": sims, "duplicate_of": np.where(of >= 0, pos[np.clip(of, 0, None)], -1)}


def semantic_pass(fs: Any, root: str, names: list[str], cols: dict[str, Any], candidates: np.ndarray,
                  d: DedupConfig, options: dict[str, Any],
                  seconds: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """SemDeDup over the candidates' embeddings → (duplicate_of per row, similarity per row, clusters);
    `seconds` gets each step's time (semantic_read, kmeans, semantic_assign, semantic_pass)."""
    from pipeline.runner import ray_adapter

    seconds = {} if seconds is None else seconds
    began = time.monotonic()

    n = len(candidates)
    score = cols[d.score_column] if d.keep == "score" else np.full(n, np.nan)
    if d.keep == "score" and np.isnan(score).all():
        raise ValueError(f"dedup.keep: 'score' ranks by dedup.score_column={d.score_column!r}, which no row has")
    counts = np.bincount(cols["file"], minlength=len(names))
    offsets = np.r_[0, np.cumsum(counts)[:-1]]
    items = [{"uri": unstrip(fs, join(root, "embeddings", f"{name}.parquet")), "offset": int(offsets[i])}
             for i, name in enumerate(names)]
    wanted = int(candidates.sum())
    k = d.clusters or max(1, round(wanted / PER_CLUSTER))
    # The sample: positions drawn here (seeded), its embeddings read on the cluster and put in position
    # order, so the k-means, and every result after it, is the same on every run
    picked = np.zeros(n, dtype=bool)
    pool = np.flatnonzero(candidates)
    picked[np.random.default_rng(d.seed).choice(pool, size=min(d.sample, len(pool)), replace=False)] = True
    stages = ray_adapter.ClusterStages(items, ReadEmbeddings, (candidates, cols["run_keep"], score), options)
    parts = [(b[POS], b[EMB]) for b in stages.filtered(Picked, picked) if len(b[POS])]
    if not parts:
        return np.full(n, -1, np.int64), np.full(n, np.nan, np.float32), 0
    pos = np.concatenate([p for p, _ in parts])
    sample_x = np.concatenate([e for _, e in parts])[np.argsort(pos)]
    seconds["semantic_read"] = time.monotonic() - began
    began = time.monotonic()
    centroids = fit_kmeans(sample_x, k, d.seed)
    seconds["kmeans"] = time.monotonic() - began
    began = time.monotonic()
    log.info("dedup: k-means of %d clusters fitted on %d of %d embeddings", len(centroids), len(sample_x), wanted)
    dup_of = np.full(n, -1, np.int64)
    sims = np.full(n, np.nan, np.float32)
    # Each cluster whole in one task, without a shuffle that holds everything until the last block is in
    # (Ray Data's hash shuffle for groupby: its reducers' memory grew with the input, BENCHMARKS.md): the
    # assigned rows are written by cluster bucket, then each bucket is read and passed by one task.
    work = join(unstrip(fs, root), "dedup", WORK)
    wfs, wpath = get_fs(work, options)
    if wfs.exists(wpath):
        wfs.rm(wpath, recursive=True)  # a run cut short left its buckets
    buckets = max(1, -(-len(centroids) // CLUSTERS_PER_BUCKET))
    results = stages.spilled_then_per_bucket(AssignAndSpill, (centroids, work, buckets, options), list(range(buckets)),
                                             partial(bucket_pass, d.keep, d.eps, work, options))
    seconds["semantic_assign"] = time.monotonic() - began  # every row assigned and written to its bucket
    began = time.monotonic()
    for b in results:
        dup_of[b[POS]], sims[b[POS]] = b["duplicate_of"], b["similarity"]
    seconds["semantic_pass"] = time.monotonic() - began
    if wfs.exists(wpath):
        wfs.rm(wpath, recursive=True)
    return dup_of, sims, len(centroids)
