"""`capfilt estimate JOB --input ... --sample N`: run the job's config on a sample, project the whole run.

The sample is the first samples of up to 16 shards spread over the input (run_job's sample_plan), run
end to end into a temporary output. From it: the start-up cost (start → first block at the driver: Ray,
actors, model loading), the steady rate (rows after the first block / time after it), and per stage the
images per second of one worker (rows / the stage's busy seconds, from Ray Data's stats). The input's
size in images comes from what the listing knows: Parquet footers and folder listings exactly; tar
shards by their bytes, at the sample's bytes per sample (tar headers read up to the sampled members).

Projection: as sampled (this config, this cluster): start-up + images / steady rate, the rate at most
the bottleneck stage's capacity. With `--actors A`
(model actors per model stage: GPUs, on a GPU box) and `--cpus C` (CPUs for the read+decode tasks), each
stage's capacity is its per-worker rate × its workers; the slowest stage is the bottleneck and sets the
rate; GPU-hours = wall hours × A × the GPUs each actor asks for, summed over model stages.
"""

from __future__ import annotations

import logging
import math
import posixpath
import tarfile
import tempfile
from dataclasses import replace
from typing import Any

from pipeline.config import Config
from pipeline.io.shards import Shard, list_shards
from pipeline.io.storage import get_fs
from pipeline.job import Job

log = logging.getLogger(__name__)


def _tar_samples(fs: Any, path: str, limit: int) -> tuple[int, int]:
    """(samples, bytes) of a tar's first `limit` samples (members grouped by key, as webdataset does)."""
    keys: set[str] = set()
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        offset = 0
        for m in tar:
            key = posixpath.splitext(m.name)[0]
            if key not in keys and len(keys) == limit:
                return len(keys), offset
            keys.add(key)
            offset = tar.offset
    return len(keys), offset


def input_images(shards: list[Shard], sampled: list[Shard], options: dict[str, Any]) -> tuple[int, str]:
    """(images in the whole input, how that was counted)."""
    import pyarrow.parquet as pq

    fmt = {s.format for s in shards}
    if fmt == {"parquet"}:
        total = 0
        for s in shards:
            fs, path = get_fs(s.uri, options)
            with fs.open(path, "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
        return total, "Parquet footers"
    if fmt == {"folder"} and all(s.files is not None for s in shards):
        return sum(len(s.files or ()) for s in shards), "folder listing"
    samples = size = 0
    for s in sampled:
        fs, path = get_fs(s.uri, options)
        n, b = _tar_samples(fs, path, s.limit or 10**12)
        samples, size = samples + n, size + b
    total_bytes = sum(s.size or 0 for s in shards)
    return round(total_bytes * samples / size) if size else 0, f"tar bytes at {size / max(samples, 1):.0f} B per sample"


def estimate(job: Job, inputs: list[str], cfg: Config, sample: int, actors: int | None = None,
             cpus: float | None = None) -> dict[str, Any]:
    from pipeline.runner.run import run_job, sample_shards

    shards = list_shards(inputs, cfg.input.format, cfg.storage, cfg.input.image_extensions, cfg.input.files_per_shard)
    sampled = sample_shards(shards, sample)  # the shards run_job's sample plan runs
    # The sample runs its models in Ray Data's actor pools, as a run on a cluster does: warm actors
    # (run.keep_warm_s) fuse the model calls into the decode tasks, and the stages' seconds with them.
    cfg = replace(cfg, run=replace(cfg.run, keep_warm_s=0.0))
    # One batch per actor in the sample: with two (`overlap`), a call's seconds include its wait for the other's
    # turn on the device, and the stage's busy seconds would count that time twice
    job = replace(job, stages=[replace(s, overlap=False) for s in job.stages])
    with tempfile.TemporaryDirectory(prefix="capfilt-estimate-") as tmp:
        summary = run_job(job, inputs, tmp, cfg, sample=sample)
    total, counted = input_images(shards, sampled, cfg.storage)
    startup = summary.first_block_s or 0.0
    # the sample's rate after its first block, however short (its steady_images_per_s needs a window)
    steady = summary.extra.get("timing", {}).get("after_first_block_img_s") or summary.images_per_s
    stages = {}
    decode_workers = (cfg.run.num_cpus or 1) / max(cfg.decode.num_cpus, 1e-9)
    for op, t in summary.stages.items():
        busy = t.get("busy_s") or 0.0
        # the last stage of an op's name is the one that names it: `ReadReadShards->MapBatches(DecodeImages)`
        spec = next((s for s in job.stages if f"({getattr(s.fn, '__name__', '')})" in op.split("->")[-1]), None)
        model = spec is not None and spec.actor
        # a model stage's workers: its pool's most actors on the cluster the sample ran on
        pool = summary.extra.get("actor_pools", {}).get(getattr(spec.fn, "__name__", "") if spec else "")
        workers = (pool[1] if pool else spec.most_actors) if model and spec is not None else decode_workers
        per_worker = summary.rows / busy if busy > 0 else math.inf
        stages[op] = {"busy_s": busy, "img_s_per_worker": per_worker, "workers": workers, "model": model,
                      "capacity_img_s": per_worker * workers, "num_gpus": spec.num_gpus if spec is not None else 0.0}
    bottleneck = min(stages, key=lambda op: stages[op]["capacity_img_s"]) if stages else None
    # The sample's rate after its first block overstates a short sample where decode ran ahead while the
    # model loaded (its blocks queued, then drained at once): the whole run cannot go faster than its
    # slowest stage's capacity.
    if bottleneck is not None and stages[bottleneck]["capacity_img_s"] < steady:
        steady = stages[bottleneck]["capacity_img_s"]
    out: dict[str, Any] = {
        "sample": {"images": summary.rows, "shards": len(sampled), "seconds": summary.seconds, "startup_s": startup,
                   "steady_img_s": steady},
        "input": {"shards": len(shards), "images": total, "counted_by": counted},
        "stages": stages, "bottleneck": bottleneck,
        "as_sampled": {"wall_s": startup + total / steady if steady else None, "img_s": steady},
    }
    if actors is not None or cpus is not None:
        scaled = {}
        for op, st in stages.items():
            workers = (actors if actors is not None else st["workers"]) if st["model"] else \
                ((cpus / max(cfg.decode.num_cpus, 1e-9)) if cpus is not None else st["workers"])
            scaled[op] = st["img_s_per_worker"] * workers
        rate = min(scaled.values()) if scaled else steady
        wall = startup + total / rate if rate else None
        gpus = sum((actors or st["workers"]) * st["num_gpus"] for st in stages.values() if st["model"])
        out["projected"] = {"actors": actors, "cpus": cpus, "img_s": rate, "wall_s": wall,
                            "bottleneck": min(scaled, key=lambda op: scaled[op]) if scaled else None,
                            "gpu_hours": wall / 3600 * gpus if wall is not None else None}
    return out


def hms(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def render(d: dict[str, Any]) -> str:
    s, i, a = d["sample"], d["input"], d["as_sampled"]
    lines = [f"capfilt estimate: sample of {s['images']} images from {s['shards']} shards in {s['seconds']:.1f} s "
             f"(start-up {s['startup_s']:.1f} s, then {s['steady_img_s']:.2f} img/s)",
             f"  input: {i['images']} images in {i['shards']} shards ({i['counted_by']})"]
    for op, st in d["stages"].items():
        mark = "  ← bottleneck" if op == d["bottleneck"] else ""
        lines.append(f"  {op}: {st['img_s_per_worker']:.2f} img/s per worker × {st['workers']:g} = "
                     f"{st['capacity_img_s']:.2f} img/s{mark}")
    lines.append(f"  as sampled (this config, this cluster): {hms(a['wall_s'])} at {a['img_s']:.2f} img/s")
    p = d.get("projected")
    if p:
        actors = p["actors"] if p["actors"] is not None else "the configured"
        cpus = f" and {p['cpus']:g} CPUs" if p["cpus"] is not None else ""
        lines.append(f"  with {actors} actors per model stage{cpus}: {hms(p['wall_s'])} at {p['img_s']:.2f} img/s, "
                     f"bottleneck {p['bottleneck']}, {p['gpu_hours']:.2f} GPU-hours")
    return "\n".join(lines)
