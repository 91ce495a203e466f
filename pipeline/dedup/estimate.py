"""`capfilt estimate dedup --input OUT --sample N`: `capfilt dedup` run on a sample of a finished run's files,
projected to all of them.

The sample: whole files of OUT, spread over it (every k-th), until they hold at least N rows; copied with
their markers into a temporary output and deduplicated there with the same settings (OUT is not written).
The whole output's row count comes from its markers (no data read).

Projection, stage by stage (`_dedup.json`'s stage seconds of the sample's run):
- reading the columns, the hashes (exact, perceptual), reading the embeddings for the k-means sample,
  assigning and bucketing them, and writing the parts grow with the rows: × rows / sample rows;
- the per-cluster pass grows with the rows and with the cluster size (pairs within a cluster): × rows /
  sample rows × full cluster size / sample cluster size (equal once the sample has a cluster's worth of
  rows per cluster: `dedup.clusters` null gives one per 5,000 embeddings);
- the k-means fit grows with its sample and its clusters: × (s × k) / (s' × k'), s = min(dedup.sample, rows);
- Ray's start and what is left of the wall time are taken as they are.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import replace
from typing import Any

from pipeline.config import Config
from pipeline.dedup.cluster import PER_CLUSTER
from pipeline.dedup.run import dedup_output
from pipeline.io.storage import get_fs, join
from pipeline.io.writer import COMMITTED, committed_shards

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
    import os

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


def estimate_dedup(output: str, cfg: Config, sample: int) -> dict[str, Any]:
    markers = committed_shards(output, cfg.storage)
    if not markers:
        raise ValueError(f"estimate dedup: {output!r} holds no committed shards: run a job into it first")
    total = sum(m.get("rows") or 0 for m in markers.values())
    chosen = sample_files(markers, sample)
    with tempfile.TemporaryDirectory(prefix="capfilt-estimate-dedup-") as tmp:
        _copy_sample(output, cfg.storage, chosen, tmp)
        s = dedup_output(tmp, replace(cfg, storage={}))
    n = s["rows"]
    f = total / n if n else 0.0
    st = dict(s["stage_seconds"])
    projected: dict[str, float] = {k: st[k] * f for k in LINEAR if k in st}
    candidates = s.get("semantic_candidates") or 0
    if "kmeans" in st and candidates:
        d = cfg.dedup
        full = candidates * f
        k_s, k_f = max(1, s["clusters"]), d.clusters or max(1, round(full / PER_CLUSTER))
        s_s, s_f = min(d.sample, candidates), min(d.sample, full)
        projected["kmeans"] = st["kmeans"] * (s_f * k_f) / (s_s * k_s)
        projected["semantic_pass"] = st.get("semantic_pass", 0.0) * f * (full / k_f) / (candidates / k_s)
    fixed = {"ray_start": st.get("ray_start", 0.0)}
    fixed["other"] = max(0.0, s["seconds"] - sum(v for k, v in st.items() if k != "semantic"))
    wall = sum(projected.values()) + sum(fixed.values())
    return {"output": output, "rows": total, "files": len(markers),
            "sample": {"rows": n, "files": len(chosen), "seconds": s["seconds"], "stage_seconds": st,
                       "duplicates": s["duplicates"], "clusters": s["clusters"]},
            "projected": {"stage_seconds": {k: round(v, 3) for k, v in projected.items()}, "fixed_seconds": fixed,
                          "wall_s": wall,
                          "duplicates": {m: round(v * f) for m, v in s["duplicates"].items()}}}


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
