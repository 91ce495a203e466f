"""Semantic dedup at scale (`--only dedup`, issue #27): 1 M synthetic 768-d float16 embeddings with planted
near-duplicate groups, written as an `embed` run's output, deduplicated by `capfilt dedup` on a local Ray:
wall time, the peak memory of the largest process (bench.meters.PeakRss: the driver and every Ray worker;
the object store's shared memory is Ray's, bounded by its own setting and spilling) at 1 M and at 250 k, and on a 50 k
subset the same groups as a brute-force reference (every pair compared, connected components)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 768
PER_FILE = 10_000
RAY_CPUS = 2


def write_run(out: Path, rows: int, seed: int = 0, group_share: float = 0.02) -> dict[str, int]:
    """An `embed` output of `rows` unit embeddings: ~`group_share` of them in planted groups of 2–4 near
    copies (cosine ≥ 0.99 to each other), the rest random (cosine ~0 to everything) → key → group id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import embeddings_schema

    rng = np.random.default_rng(seed)
    schema = embeddings_schema({"image_embedding": DIM}, "float16", with_status=True)
    (out / "embeddings").mkdir(parents=True, exist_ok=True)
    (out / "_committed").mkdir(exist_ok=True)
    groups: dict[str, int] = {}
    gid = 0
    for f in range(-(-rows // PER_FILE)):
        n = min(PER_FILE, rows - f * PER_FILE)
        x = rng.standard_normal((n, DIM), dtype=np.float32)
        keys = [f"{f:05d}{i:05d}" for i in range(n)]
        i = 0
        while i < n:
            size = int(rng.integers(2, 5))
            if rng.random() < group_share / 3 and i + size <= n:  # a group: near copies of row i
                x[i + 1 : i + size] = x[i] + 0.05 * rng.standard_normal((size - 1, DIM), dtype=np.float32)
                for j in range(i, i + size):
                    groups[keys[j]] = gid
                gid += 1
                i += size
            else:
                i += 1
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        source = f"synthetic/{f:05d}.tar"
        table = pa.table({"key": keys, "source": [source] * n, "status": ["ok"] * n, "error": [None] * n,
                          "text": [None] * n, "width": [None] * n, "height": [None] * n, "sha256": [None] * n,
                          "phash": [None] * n, "regions": [None] * n,
                          "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float16).ravel()), DIM)},
                         schema=schema)
        pq.write_table(table, out / "embeddings" / f"{f:05d}.parquet")
        (out / "_committed" / f"{f:05d}.json").write_text(json.dumps({"source": source, "name": f"{f:05d}", "rows": n}))
    return groups


def run_dedup(out: Path, eps: float) -> dict[str, Any]:
    from pipeline.config import load_config
    from pipeline.dedup.run import dedup_output

    cfg = load_config(None, ["dedup.exact=false", "dedup.perceptual=false", "dedup.semantic=true", f"dedup.eps={eps}",
                             f"run.num_cpus={RAY_CPUS}", "run.progress=none"])
    from bench.meters import PeakRss

    start = time.perf_counter()
    with PeakRss() as peak:
        summary = dedup_output(str(out), cfg)
    return {"rows": summary["rows"], "seconds": time.perf_counter() - start, "peak_rss": peak.peak_process,
            "peak_process": peak.peak_process_name, "clusters": summary["clusters"],
            "duplicates": summary["duplicates"]["semantic"], "stage_seconds": summary["stage_seconds"]}


def estimate_full(out: Path, eps: float, sample: int) -> dict[str, Any]:
    """`capfilt estimate dedup` of the full output from a sample of `sample` rows (its files copied)."""
    from pipeline.config import load_config
    from pipeline.dedup.estimate import estimate_dedup

    cfg = load_config(None, ["dedup.exact=false", "dedup.perceptual=false", "dedup.semantic=true", f"dedup.eps={eps}",
                             f"run.num_cpus={RAY_CPUS}", "run.progress=none"])
    start = time.perf_counter()
    e = estimate_dedup(str(out), cfg, sample)
    return {"sample_rows": e["sample"]["rows"], "predicted_s": e["projected"]["wall_s"],
            "predicted_duplicates": e["projected"]["duplicates"]["semantic"], "seconds": time.perf_counter() - start,
            "projected_stages": e["projected"]["stage_seconds"]}


def found_groups(out: Path, with_kept: bool = False) -> Any:
    """The groups `capfilt dedup` made: each kept row with the rows that point at it (with_kept: as
    (the kept row, the group))."""
    import pyarrow.parquet as pq

    t = pq.read_table(out / "dedup", columns=["key", "duplicate_of"]).to_pylist()
    groups: dict[str, set[str]] = {}
    for r in t:
        if r["duplicate_of"]:
            groups.setdefault(r["duplicate_of"], {r["duplicate_of"]}).add(r["key"])
    if with_kept:
        return {(k, frozenset(g)) for k, g in groups.items()}
    return {frozenset(g) for g in groups.values()}


def brute_force_groups(out: Path, eps: float) -> set[frozenset[str]]:
    """Every pair compared (block by block), connected components of cosine ≥ 1 − eps."""
    import pyarrow.parquet as pq

    from pipeline.dedup.hashes import UnionFind

    t = pq.read_table(out / "embeddings", columns=["key", "image_embedding"])
    keys = t["key"].to_pylist()
    x = np.stack(t["image_embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    union = UnionFind(len(x))
    for a in range(0, len(x), 2048):
        sims = x[a : a + 2048] @ x.T
        for i, j in zip(*np.nonzero(sims >= 1 - eps), strict=True):
            if a + i != j:
                union.join(a + int(i), int(j))
    comps: dict[int, set[str]] = {}
    for i, k in enumerate(keys):
        comps.setdefault(union.find(i), set()).add(k)
    return {frozenset(c) for c in comps.values() if len(c) > 1}


def per_cluster_reference(out: Path, eps: float, seed: int = 0, sample: int = 100_000) -> set[tuple[str, frozenset[str]]]:
    """SemDeDup's own definition, in one process and without blocks, buckets or Ray: the same k-means (its
    sample drawn as `capfilt dedup` draws it, the embeddings as it reads them: float16 → unit float32),
    then in each cluster every pair compared at once (the full matrix), items ranked `hard`, each a
    duplicate of its most similar item ranked before it when that is ≥ 1 − eps, chains followed to the item
    that stays → (the item that stays, its group)."""
    import pyarrow.parquet as pq

    from pipeline.dedup.cluster import PER_CLUSTER
    from pipeline.dedup.semantic import assign, fit_kmeans

    t = pq.read_table(out / "embeddings", columns=["key", "image_embedding"])
    keys = t["key"].to_pylist()
    x = np.stack(t["image_embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    picked = np.zeros(n, dtype=bool)
    picked[np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False)] = True
    centroids = fit_kmeans(x[picked], max(1, round(n / PER_CLUSTER)), seed)
    clusters, csim = assign(x, centroids)
    y = x.astype(np.float16).astype(np.float32)  # as the per-cluster pass reads them back
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    dup_of = np.full(n, -1, np.int64)
    for c in np.unique(clusters):
        idx = np.flatnonzero(clusters == c)
        order = idx[np.lexsort((idx, csim[idx]))]  # hard: least similar to the centroid first; ties by position
        sims = y[order] @ y[order].T
        sims[np.triu_indices(len(order))] = -np.inf  # only items ranked before
        best = sims.argmax(axis=1)
        hit = sims[np.arange(len(order)), best] >= 1 - eps
        dup_of[order[hit]] = order[best[hit]]
    root = dup_of.copy()
    while (chained := (root >= 0) & (dup_of[np.clip(root, 0, None)] >= 0)).any():
        root[chained] = dup_of[root[chained]]
    groups: dict[int, set[str]] = {}
    for i in np.flatnonzero(root >= 0):
        groups.setdefault(int(root[i]), {keys[root[i]]}).add(keys[i])
    return {(keys[r], frozenset(g)) for r, g in groups.items()}


def bench_dedup(work: Path, rows: int, eps: float = 0.05) -> dict[str, Any]:
    """1 M and 250 k (or `rows` and a quarter), and the 50 k check (or a twentieth)."""
    from pipeline.config import load_config
    from pipeline.runner import ray_start

    sizes = {"full": rows, "quarter": rows // 4, "check": max(rows // 20, 1000)}
    res: dict[str, Any] = {"dim": DIM, "dtype": "float16", "eps": eps, "ray_cpus": RAY_CPUS}
    outs = {}
    for label, n in sizes.items():
        t = time.perf_counter()
        planted = write_run(work / f"dedup-{label}", n, seed=len(label))
        outs[label] = work / f"dedup-{label}"
        res[f"{label}_rows"] = n
        res[f"{label}_planted_groups"] = len(set(planted.values()))
        res[f"{label}_write_s"] = time.perf_counter() - t
    ray_cfg = load_config(None, [f"run.num_cpus={RAY_CPUS}"])
    started = ray_start.init_ray(ray_cfg)
    try:
        for label in ("check", "quarter", "full"):
            res[label] = run_dedup(outs[label], eps)
        res["estimate"] = estimate_full(outs["full"], eps, sizes["check"])
    finally:
        if started:
            ray_start.shutdown(ray_cfg)
    res["memory_ratio"] = res["full"]["peak_rss"] / res["quarter"]["peak_rss"]
    res["estimate"]["error"] = res["estimate"]["predicted_s"] / res["full"]["seconds"] - 1
    found, truth = found_groups(outs["check"]), brute_force_groups(outs["check"], eps)
    res["check_same_groups"] = found == truth
    res["check_groups"] = {"found": len(found), "brute_force": len(truth), "common": len(found & truth)}
    kept = found_groups(outs["check"], with_kept=True)
    reference = per_cluster_reference(outs["check"], eps)
    res["check_same_as_reference"] = kept == reference
    res["check_reference"] = {"found": len(kept), "reference": len(reference), "common": len(kept & reference)}
    return res
