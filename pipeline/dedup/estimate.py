"""`capfilt estimate dedup --input OUT --sample N`: `capfilt dedup` run on samples of a finished run's files,
projected to all of them.

The samples: whole files of OUT, spread over it (every k-th), until they hold at least N rows, and the
first half of those files; each copied with its markers into a temporary output and deduplicated there
with the same settings (OUT is not written). The whole output's row count comes from its markers (no data
read).

Projection, step by step (`_dedup.json`'s seconds of the two samples' runs): a step's time is fitted as a
fixed part plus a part that grows with the rows (two samples of different sizes tell them apart; one alone
would scale Ray Data's start-up of each step with the rows: +55 % at 1 M from 50 k, BENCHMARKS.md):
- reading the columns, the hashes (exact, perceptual), reading the embeddings for the k-means sample,
  assigning and bucketing them, and writing the parts: with the rows;
- the per-cluster pass: with the rows × the cluster size (pairs within a cluster; the size is the same at
  every scale with `dedup.clusters` null, one cluster per 5,000 embeddings);
- the k-means fit: measured, not extrapolated (faiss's time per point and centroid falls as the centroids
  grow): the whole run's number of clusters fitted on the larger sample's embeddings, × the whole run's
  k-means sample (`dedup.sample` at most) / the embeddings fitted here.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.dedup.cluster import PER_CLUSTER, vectors
from pipeline.dedup.run import dedup_output
from pipeline.dedup.semantic import fit_kmeans
from pipeline.io.storage import get_fs, join
from pipeline.io.writer import COMMITTED, committed_shards
from pipeline.schema import IMAGE_EMBEDDING, OK, STATUS

LINEAR = ("read", "exact", "perceptual", "semantic_read", "semantic_assign", "write")


def sample_files(markers: dict[str, dict[str, Any]], sample: int) -> list[dict[str, Any]]:
    """Markers of whole files spread over the output (every k-th by name) holding at least `sample` rows."""
    ordered = sorted(markers.values(), key=lambda m: m["name"])
    if not ordered:
        return []
    per_file = max(1.0, sum(m.get("rows") or 0 for m in ordered) / len(ordered))
    want = min(len(ordered), max(1, math.ceil(sample / per_file)))
    step = len(ordered) / want
    chosen = [ordered[int(i * step)] for i in range(want)]
    rest = iter(m for m in ordered if m not in chosen)
    while sum(m.get("rows") or 0 for m in chosen) < sample and (more := next(rest, None)) is not None:
        chosen.append(more)
    return chosen


def _copy_sample(output: str, options: dict[str, Any], chosen: list[dict[str, Any]], into: str) -> None:
    fs, root = get_fs(output, options)
    os.makedirs(os.path.join(into, COMMITTED))
    for table in ("captions", "embeddings"):
        for m in chosen:
            src = join(root, table, f"{m['name']}.parquet")
            if fs.exists(src):
                os.makedirs(os.path.join(into, table), exist_ok=True)
                fs.get(src, os.path.join(into, table, f"{m['name']}.parquet"))
    for m in chosen:
        with open(os.path.join(into, COMMITTED, f"{m['name']}.json"), "w") as f:
            json.dump(m, f)


def fit_step(xs: list[float], ts: list[float], at: float) -> float:
    """A step's time at `at` from its times `ts` at sizes `xs` (ascending): a fixed part plus a part in
    proportion, both ≥ 0 (the line through the two, else through the larger and 0); from one size, in
    proportion."""
    if len(xs) < 2 or xs[1] <= xs[0]:
        return ts[-1] * at / xs[-1] if xs[-1] else ts[-1]
    slope = max(0.0, (ts[1] - ts[0]) / (xs[1] - xs[0]))
    fixed = ts[1] - slope * xs[1]
    return fixed + slope * at if fixed >= 0 else ts[1] * at / xs[1]  # the line through the larger sample and 0


def _kmeans_seconds(folder: str, d: Any, k: int, sample: float) -> tuple[float, int]:
    """(seconds of fitting k clusters on `sample` embeddings, embeddings fitted here): measured on the ok
    rows' embeddings of `folder` (at most `sample` of them), scaled to `sample`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = os.path.join(folder, "embeddings")
    names = pq.read_schema(os.path.join(path, sorted(os.listdir(path))[0])).names
    t = pq.read_table(path, columns=[c for c in (STATUS, IMAGE_EMBEDDING) if c in names])
    if STATUS in t.column_names:
        t = t.filter(pc.equal(t[STATUS], OK))
    x = vectors(pc.drop_null(t[IMAGE_EMBEDDING]))
    x = x[np.random.default_rng(d.seed).permutation(len(x))[: int(min(sample, len(x)))]]
    if not len(x):
        return 0.0, 0
    began = time.monotonic()
    fit_kmeans(x, k, d.seed)
    return (time.monotonic() - began) * sample / len(x), len(x)


def estimate_dedup(output: str, cfg: Config, sample: int) -> dict[str, Any]:
    markers = committed_shards(output, cfg.storage)
    if not markers:
        raise ValueError(f"estimate dedup: {output!r} holds no committed shards: run a job into it first")
    total = sum(m.get("rows") or 0 for m in markers.values())
    chosen = sample_files(markers, sample)
    samples = [chosen[: len(chosen) // 2], chosen] if len(chosen) >= 2 else [chosen]
    runs, kmeans = [], None
    with tempfile.TemporaryDirectory(prefix="capfilt-estimate-dedup-") as tmp:
        for i, files in enumerate(samples):
            folder = os.path.join(tmp, str(i))
            _copy_sample(output, cfg.storage, files, folder)
            runs.append(dedup_output(folder, replace(cfg, storage={})))
        last = runs[-1]
        f = total / last["rows"] if last["rows"] else 0.0
        full = (last.get("semantic_candidates") or 0) * f  # the whole run's semantic candidates
        d = cfg.dedup
        k_full = d.clusters or max(1, round(full / PER_CLUSTER))
        if last.get("semantic") and full:
            kmeans = _kmeans_seconds(os.path.join(tmp, str(len(samples) - 1)), d, k_full, min(d.sample, full))
    rows = [float(r["rows"]) for r in runs]
    projected: dict[str, float] = {}
    for k in LINEAR:
        if all(k in r["stage_seconds"] for r in runs):
            projected[k] = fit_step(rows, [r["stage_seconds"][k] for r in runs], total)
    if kmeans is not None:
        projected["kmeans"] = kmeans[0]
        # pairs within clusters: rows × cluster size
        pairs = [r["semantic_candidates"] * r["semantic_candidates"] / max(1, r["clusters"]) for r in runs]
        projected["semantic_pass"] = fit_step(pairs, [r["stage_seconds"].get("semantic_pass", 0.0) for r in runs],
                                          full * full / k_full)
    st = last["stage_seconds"]
    fixed = {"ray_start": st.get("ray_start", 0.0),
             "other": max(0.0, last["seconds"] - sum(v for k, v in st.items() if k != "semantic"))}
    wall = sum(projected.values()) + sum(fixed.values())
    return {"output": output, "rows": total, "files": len(markers),
            "sample": {"rows": last["rows"], "files": len(chosen), "seconds": sum(r["seconds"] for r in runs),
                       "sizes": [r["rows"] for r in runs], "stage_seconds": st,
                       "duplicates": last["duplicates"], "clusters": last["clusters"],
                       "kmeans_fitted_on": kmeans[1] if kmeans else 0},
            "projected": {"stage_seconds": {k: round(v, 3) for k, v in projected.items()}, "fixed_seconds": fixed,
                          "clusters": k_full if kmeans else 0, "wall_s": wall,
                          "duplicates": {m: round(v * f) for m, v in last["duplicates"].items()}}}


def render(d: dict[str, Any]) -> str:
    from pipeline.runner.estimate import hms

    s, p = d["sample"], d["projected"]
    lines = [f"capfilt estimate dedup: sample of {s['rows']} rows from {s['files']} of {d['files']} files in "
             f"{s['seconds']:.1f} s ({s['clusters']} clusters)",
             f"  output: {d['rows']} rows in {d['files']} files (markers)"]
    for k, v in p["stage_seconds"].items():
        lines.append(f"  {k}: {s['stage_seconds'].get(k, 0.0):.2f} s in the sample → {v:.1f} s")
    lines.append(f"  Ray start and the rest: {sum(p['fixed_seconds'].values()):.1f} s")
    dups = ", ".join(f"{m} ~{v}" for m, v in p["duplicates"].items())
    lines.append(f"  projected: {hms(p['wall_s'])}; duplicates at the sample's rate: {dups}")
    return "\n".join(lines)
