"""SemDeDup (Abbas et al. 2023) on L2-normalised image embeddings: k-means, then within each cluster every
item's highest cosine to an item ranked before it; the item is a duplicate where that is ≥ 1 − eps.

The k-means is faiss's, fitted on a bounded sample; assigning every embedding to its nearest centroid and
the pass within each cluster are plain functions that the Ray layer (dedup/run.py) maps over blocks and
clusters, so no process ever holds more than one block or one cluster. Which item of a group stays is the
ranking: `hard` keeps the one farthest from its centroid first (NeMo Curator's default: the less typical
example), `easy` the nearest, `score` the one with the highest score (an aesthetic score, say).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BLOCK = 1024  # rows of a cluster compared at a time: a 1,024 × n float32 slice, never n × n


def fit_kmeans(sample: np.ndarray, k: int, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """(k, d) float32 unit centroids of `sample` (spherical k-means: cosine, as the embeddings are)."""
    import faiss

    x = np.ascontiguousarray(sample, dtype=np.float32)
    k = max(1, min(k, len(x)))
    # every sample point is used (the sample is bounded already), and few points per centroid is no error
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, -(-len(x) // k)), min_points_per_centroid=1)
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32)


def assign(embeddings: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each embedding's nearest centroid by cosine → (cluster ids int32, cosine to it float32)."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    sims, ids = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), 1)
    return ids[:, 0].astype(np.int32), sims[:, 0].astype(np.float32)


def ranking(strategy: str, centroid_sim: np.ndarray, score: np.ndarray | None = None,
            preferred: np.ndarray | None = None) -> np.ndarray:
    """The order in which a cluster's items claim to stay, best first: rows the run kept (`preferred`)
    before the others, then by `strategy`; ties by position (the input's order), so it is deterministic."""
    n = len(centroid_sim)
    if strategy == "hard":
        key = centroid_sim  # least similar to the centroid first
    elif strategy == "easy":
        key = -centroid_sim
    elif strategy == "score":
        if score is None:
            raise ValueError("dedup.keep: 'score' needs a score column")
        key = -np.nan_to_num(score.astype(np.float64), nan=-np.inf)
    else:
        raise ValueError(f"dedup.keep: unknown strategy {strategy!r}")
    first = (~preferred).astype(np.int8) if preferred is not None else np.zeros(n, np.int8)
    return np.lexsort((np.arange(n), key, first))


def cluster_duplicates(embeddings: np.ndarray, order: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Within one cluster, in `order` (best first): each item's highest cosine to an item ranked before it
    and that item's position → (similarity float32, duplicate_of int64: -1 where it is first or below
    1 − eps). Block by block: BLOCK × n at a time."""
    x = np.ascontiguousarray(embeddings[order], dtype=np.float32)
    n = len(x)
    best = np.full(n, -np.inf, dtype=np.float32)
    of = np.full(n, -1, dtype=np.int64)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        sims = x[start:stop] @ x[:stop].T  # rows: items start..stop; columns: every item up to them
        # only items ranked before: column j < row i
        rows = np.arange(start, stop)[:, None]
        sims[np.arange(stop)[None, :] >= rows] = -np.inf
        j = sims.argmax(axis=1)
        best[start:stop] = sims[np.arange(stop - start), j]
        of[start:stop] = j
    dup = best >= 1.0 - eps
    similarity = np.where(np.isfinite(best), best, np.nan).astype(np.float32)
    duplicate_of = np.where(dup, order[np.clip(of, 0, None)], -1)
    out_sim = np.empty(n, np.float32)
    out_of = np.empty(n, np.int64)
    out_sim[order], out_of[order] = similarity, duplicate_of  # back to the input's positions
    return out_sim, out_of


def semdedup(embeddings: np.ndarray, k: int, eps: float, strategy: str = "hard", seed: int = 0,
             sample: int = 100_000, score: np.ndarray | None = None, preferred: np.ndarray | None = None
             ) -> dict[str, Any]:
    """The whole method in one process (tests, the benchmark's reference on a subset): → cluster ids,
    similarity to the best-ranked earlier item of the cluster, duplicate_of (a position, -1: stays)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(embeddings), size=min(sample, len(embeddings)), replace=False)
    centroids = fit_kmeans(embeddings[np.sort(pick)], k, seed)
    clusters, csim = assign(embeddings, centroids)
    similarity = np.full(len(embeddings), np.nan, np.float32)
    duplicate_of = np.full(len(embeddings), -1, np.int64)
    for c in np.unique(clusters):
        idx = np.flatnonzero(clusters == c)
        order = ranking(strategy, csim[idx], None if score is None else score[idx],
                        None if preferred is None else preferred[idx])
        s, of = cluster_duplicates(embeddings[idx], order, eps)
        similarity[idx] = s
        duplicate_of[idx] = np.where(of >= 0, idx[np.clip(of, 0, None)], -1)
    return {"cluster": clusters, "similarity": similarity, "duplicate_of": duplicate_of}
