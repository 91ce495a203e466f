"""Is the read+decode stage near the codec? Its img/s per core against capfilt's own decode function in
one process on the same JPEGs (`--only stage`, issue #26), what each layer between costs, and the cost of
many small shards.

Per core: the stage alone on a Ray of RAY_CPUS CPUs (its blocks streamed to this driver, which only
counts them), img/s in its steady window ÷ RAY_CPUS: every other process of the machine (Ray's own, the
driver) is charged to the stage. The baseline: capfilt's decode function as the stage calls it
(`decode_hashed`: the pixels at every target and the perceptual hash; and the bytes' sha256), in this
process, on every distinct image of the run, measured just before and after each Ray run once the cores
are quiet (this VM's cores change speed from minute to minute). The layers, each in this process on the
same shards, in CPU ms per image: the decode with and without the hashes, tar streaming and block
building (`read_shard`), the decode stage as a task runs it (`DecodeImages` with its Arrow conversions),
and the same with the isolated decoder child (`decode.isolate`, the default): the child's transfer.
"""

from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

RAY_CPUS = 2

# CLIP's input (ViT-B/32 and L/14: shortest edge 224, centre crop 224, bicubic), the case the issue measured
CLIP_SIZE = 224


def _ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _child_cpu(pid: int) -> float:
    return _ticks(pid) / os.sysconf("SC_CLK_TCK")


def _decode_spec(rows_per_block: int = 64) -> tuple[Any, Any]:
    """(the decode stage's spec, config) of the embed job, at CLIP's input size."""
    from bench.feed import shaped_job

    job, cfg = shaped_job("clip", 1.0, os.devnull)
    cfg = replace(cfg, input=replace(cfg.input, rows_per_block=rows_per_block))
    spec = job.stages[0]
    dc, (target,) = spec.args[0], spec.args[1]
    target = replace(target, height=CLIP_SIZE, width=CLIP_SIZE, shortest_edge=CLIP_SIZE)
    return replace(spec, args=(dc, (target,), cfg.input)), cfg


def layers(shards: list[Any], spec: Any, cfg: Any, rounds: int) -> dict[str, float]:
    """CPU ms per image of each layer, in this process (the best of `rounds`, interleaved)."""
    from ray.data.extensions import ArrowTensorArray

    from pipeline.columns import to_arrow, to_numpy
    from pipeline.decode.image import decode
    from pipeline.decode.isolated import IsolatedDecoder
    from pipeline.io.readers import read_shard
    from pipeline.stages.decode import DecodeImages

    dc, targets = spec.args[0], spec.args[1]
    blocks = [b for s in shards for b in read_shard(s, cfg.input, cfg.storage)]
    datas = [x for b in blocks for x in b.column("image").to_pylist() if x]
    n = len(datas)
    plain = DecodeImages(replace(dc, isolate=False), targets, cfg.input)
    isolated = DecodeImages(replace(dc, isolate=True), targets, cfg.input)

    def codec() -> None:
        for d in datas:
            decode(d, targets, dc.max_pixels, dc.formats, dc.draft, dc.fast)

    def hashed() -> None:
        decode_as_the_stage(datas, spec)

    def read() -> None:
        for s in shards:
            for _ in read_shard(s, cfg.input, cfg.storage):
                pass

    def stage(st: Any) -> Any:
        def run() -> None:
            for b in blocks:
                to_arrow(st(to_numpy(b)), tensor=ArrowTensorArray.from_numpy)
        return run

    isolated(to_numpy(blocks[0]))  # the child started
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in (("decode", codec), ("decode_hashed", hashed), ("read", read), ("stage", stage(plain)),
                         ("stage_isolated", stage(isolated))):
            child = IsolatedDecoder.proc.pid if IsolatedDecoder.proc is not None else None
            c0, k0 = _self_cpu(), _child_cpu(child) if child else 0.0
            fn()
            used = _self_cpu() - c0 + ((_child_cpu(child) - k0) if child else 0.0)
            best[name] = min(best.get(name, float("inf")), used / n * 1e3)
    IsolatedDecoder.close()
    return {"images": n, **{f"{k}_ms": v for k, v in best.items()}}


def decode_as_the_stage(datas: list[bytes], spec: Any) -> None:
    """capfilt's decode function as the decode stage calls it for each image: the pixels at every target,
    the perceptual hash of the decoded image and the bytes' sha256 (issue #27's hashes)."""
    import hashlib

    from pipeline.decode.image import decode_hashed

    dc, targets = spec.args[0], spec.args[1]
    for d in datas:
        decode_hashed(d, targets, dc.max_pixels, dc.formats, dc.draft, dc.fast)
        hashlib.sha256(d).hexdigest()


def settle(busy_below: float = 0.15, timeout: float = 15.0) -> float:
    """Waits until this machine's cores are quiet (under `busy_below` of them busy over 0.5 s: the last
    run's workers and decoder children wound down), at most `timeout` seconds; → the seconds waited."""
    def busy() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # all but idle and iowait

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        b0, t0 = busy()
        time.sleep(0.5)
        b1, t1 = busy()
        if (b1 - b0) < busy_below * max(1, t1 - t0):
            break
    return time.perf_counter() - start


def codec_rate(datas: list[bytes], spec: Any, seconds: float = 2.0) -> float:
    """decode_as_the_stage in this process, img/s (one core)."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        decode_as_the_stage(datas, spec)
        n += len(datas)
    return n / (time.perf_counter() - start)


def ray_stage(shards: list[Any], spec: Any, cfg: Any, slots: int | None = None, images: int = 0) -> dict[str, float]:
    """The read+decode stage alone in Ray Data (the read fused with decode, as a run has it), its blocks
    streamed to this driver: wall seconds, and img/s in the steady window (from the block that brings the
    rows past a fifth of `images` to the one past nine tenths: the workers' start and imports, and the tail
    where fewer tasks run, outside it)."""
    from pipeline.runner import ray_adapter

    ray_adapter.configure(cfg)
    source = ray_adapter.ShardDatasource(shards, cfg.input, cfg.storage,
                                         slots or ray_adapter.decode_slots(cfg, None))
    ds = ray_adapter._apply(ray_adapter._read(source, cfg), spec, keep=["key", "status"])
    start, rows = time.perf_counter(), 0
    window: dict[str, Any] = {}
    for block in ray_adapter.stream(ds):
        rows += block.num_rows
        if "t" not in window and rows >= images / 5:
            window.update(rows=rows, t=time.perf_counter())
        elif "images" not in window and "t" in window and rows >= images * 9 / 10:
            window.update(images=rows - window["rows"], seconds=time.perf_counter() - window["t"])
    wall = time.perf_counter() - start
    out = {"rows": rows, "wall_s": wall, "tasks": len(ray_adapter.pack(shards, source.slots))}
    if "images" in window:
        out.update(window_images=window["images"], window_img_s=window["images"] / window["seconds"])
    return out


def bench_stage(work: Path, images: int, rounds: int) -> dict[str, Any]:
    from bench.data import web_jpegs, write_shards
    from pipeline.config import load_config
    from pipeline.io.shards import list_shards
    from pipeline.runner import ray_start

    pool = web_jpegs(min(images, 240), seed=5)  # distinct web JPEGs, cycled
    glob = write_shards((pool[i % len(pool)] for i in range(images)), work / "stage-in", 64)
    spec, cfg = _decode_spec()
    shards = list_shards([glob])
    out: dict[str, Any] = {"target": f"{CLIP_SIZE}x{CLIP_SIZE}", "layers": layers(shards, spec, cfg, rounds)}
    small = min(images, 4000)  # the same images as 4-image shards and 500-image shards
    few = write_shards((pool[i % len(pool)] for i in range(small)), work / "stage-500", 500)
    many = write_shards((pool[i % len(pool)] for i in range(small)), work / "stage-4", 4)
    ray_cfg = load_config(None, [f"run.num_cpus={RAY_CPUS}"])
    ray_start.init_ray(ray_cfg)
    try:
        ray_stage(shards[:2], spec, cfg)  # Ray's workers started, their imports done
        # This VM's cores change speed by ±20 % from minute to minute: each Ray run is paired with the
        # in-process decode measured just before and after it, on the same images as the run (every
        # distinct one of the pool, which the run cycles through), once the cores are quiet again (Ray's
        # workers and decoder children wind down for a few seconds after a run); the ratio is the median
        # of the pairs'.
        plain = replace(spec, args=(replace(spec.args[0], isolate=False), *spec.args[1:]))
        datas = pool
        runs: dict[str, list[dict[str, float]]] = {"iso": [], "plain": []}
        settle()
        before = codec_rate(datas, spec)
        for _ in range(rounds):
            for label, s in (("iso", spec), ("plain", plain)):
                r = ray_stage(shards, s, cfg, images=images)
                r["settle_s"] = settle()
                after = codec_rate(datas, spec)
                r["decode_img_s"] = (before + after) / 2
                r["ratio"] = r["window_img_s"] / RAY_CPUS / r["decode_img_s"]
                runs[label].append(r)
                before = after
        for label, rs in runs.items():
            out[f"ray_{label}"] = {"ratio": statistics.median(r["ratio"] for r in rs), "runs": rs}
        small_shards = {"few": list_shards([few]), "many": list_shards([many])}
        sm: dict[str, list[float]] = {"few": [], "many": [], "many_unpacked": []}
        for _ in range(rounds):
            sm["few"].append(ray_stage(small_shards["few"], spec, cfg)["wall_s"])
            sm["many"].append(ray_stage(small_shards["many"], spec, cfg)["wall_s"])
        # a task per shard (before the packing), once: the reference
        sm["many_unpacked"].append(ray_stage(small_shards["many"], spec, cfg, slots=len(small_shards["many"]))["wall_s"])
        out["shards"] = {"images": small, "few": len(small_shards["few"]), "many": len(small_shards["many"]),
                         **{f"{k}_s": min(v) for k, v in sm.items()}, "all": sm,
                         "ratio": min(sm["many"]) / min(sm["few"]),
                         "ratio_unpacked": min(sm["many_unpacked"]) / min(sm["few"])}
    finally:
        ray_start.shutdown(ray_cfg)
    iso = out["ray_iso"]["runs"]
    out["per_core"] = {"cores": RAY_CPUS, "decode_img_s": statistics.median(r["decode_img_s"] for r in iso),
                       "stage_img_s": statistics.median(r["window_img_s"] / RAY_CPUS for r in iso),
                       "ratio": out["ray_iso"]["ratio"], "ratio_plain": out["ray_plain"]["ratio"],
                       "ratios": [round(r["ratio"], 3) for r in iso]}
    return out
