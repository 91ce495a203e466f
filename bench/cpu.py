"""The CPU suite, side by side in one run: decode, captioning (loop vs model alone vs pipeline), BLIP
attention, memory."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import iter_web_jpegs, linked_copies, web_jpegs, write_shards
from bench.meters import PeakRss, each_way, rate


def bench_decode(datas: list[bytes], model_dir: str, seconds: float) -> dict[str, Any]:
    """Per core: PIL full decode + processor  vs  capfilt's decode + the same normalisation."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, BlipForConditionalGeneration

    from pipeline.decode.geometry import Target
    from pipeline.decode.image import decode

    torch.set_num_threads(1)
    proc = AutoImageProcessor.from_pretrained(model_dir)
    size = proc.size["height"]
    target = (Target("p", size, size),)
    formats = ("JPEG",)

    def baseline() -> int:
        for d in datas:
            proc(images=Image.open(io.BytesIO(d)).convert("RGB"), return_tensors="np")
        return len(datas)

    def ours() -> int:
        for d in datas:
            decode(d, target, 10**9, formats, fast=True)
        return len(datas)

    base_rate, _ = rate(baseline, seconds)
    ours_rate, _ = rate(ours, seconds)
    # Fidelity: the same vision tower on both paths' pixel values.
    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    sample = datas[:32]
    ref = proc(images=[Image.open(io.BytesIO(d)).convert("RGB") for d in sample], return_tensors="pt")["pixel_values"]
    fast = proc(images=[decode(d, target, 10**9, formats, fast=True)[0]["p"] for d in sample], return_tensors="pt")
    with torch.inference_mode():
        a = model.vision_model(pixel_values=ref).pooler_output
        b = model.vision_model(pixel_values=fast["pixel_values"]).pooler_output
    cos = torch.nn.functional.cosine_similarity(a, b).numpy()
    return {"baseline_img_s": base_rate, "capfilt_img_s": ours_rate, "ratio": ours_rate / base_rate,
            "fidelity_cos_min": float(cos.min()), "fidelity_cos_mean": float(cos.mean()), "target_px": size}

GEN = {"num_beams": 1, "do_sample": False, "max_new_tokens": 20, "min_new_tokens": 20}

def bench_loop(datas: list[bytes], model_dir: str, threads: int, seconds: float) -> float:
    """The seeds' per-image loop: open one image, processor, generate, decode."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, BlipForConditionalGeneration

    torch.set_num_threads(threads)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    it = iter(range(10**9))

    def one() -> int:
        d = datas[next(it) % len(datas)]
        inputs = processor(images=Image.open(io.BytesIO(d)).convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, **GEN)
        processor.decode(out[0], skip_special_tokens=True)
        return 1

    one()  # warm-up
    return rate(one, seconds)[0]

def _pixel_batches(datas: list[bytes], processor: Any, batch: int, n: int) -> list[Any]:
    from PIL import Image

    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas[: batch * n]]
    return [processor(images=images[i : i + batch], return_tensors="pt")["pixel_values"]
            for i in range(0, len(images), batch)]

def bench_model_alone(datas: list[bytes], model_dir: str, threads: int, batch: int, seconds: float) -> float:
    """The model alone, batched, on pre-decoded pixel values, with the decoder the captioner runs."""
    import torch
    from transformers import AutoProcessor, BlipForConditionalGeneration

    from pipeline.models import blip_attention

    torch.set_num_threads(threads)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    shared = blip_attention.install(model)
    batches = _pixel_batches(datas, processor, batch, 2)
    it = iter(range(10**9))

    def one() -> int:
        pv = batches[next(it) % len(batches)]
        with torch.inference_mode(), shared.session(len(pv)):
            model.generate(pixel_values=pv, **GEN)
        return len(pv)

    one()
    return rate(one, seconds)[0]

BEAM = {"num_beams": 3, "do_sample": False, "max_new_tokens": 20, "min_new_tokens": 20}

def bench_cross(model: Any, batches: list[Any], threads: int, seconds: float) -> dict[str, Any]:
    """BLIP beam-3 captioning, model alone: transformers' attention vs capfilt's (SDPA vision tower,
    shared cross-attention), on the same model and pixel batches in turn; `same_tokens`: both wrote the
    same captions."""
    import torch

    from pipeline.models import blip_attention

    torch.set_num_threads(threads)
    shared = blip_attention.install(model)

    def run(pv: Any, ours: bool) -> Any:
        with torch.inference_mode(), shared.session(len(pv)) if ours else blip_attention.stock_attention(model):
            return model.generate(pixel_values=pv, **BEAM)

    same = all(torch.equal(run(pv, False), run(pv, True)) for pv in batches)  # also the warm-up
    rates = each_way(run, batches, len, seconds)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {"stock_img_s": rates["stock"], "capfilt_img_s": rates["capfilt"], "ratio": rates["ratio"],
            "same_tokens": same, "batch_size": len(batches[0]), "num_beams": BEAM["num_beams"],
            "params_m": round(params, 2), "image_size": int(model.config.vision_config.image_size)}

def bench_cross_small(datas: list[bytes], model_dir: str, threads: int, batch: int, seconds: float) -> dict[str, Any]:
    """`bench_cross` on a saved BLIP and its processor's pixel values of real photos."""
    from transformers import AutoProcessor, BlipForConditionalGeneration

    model = BlipForConditionalGeneration.from_pretrained(model_dir).eval()
    return bench_cross(model, _pixel_batches(datas, AutoProcessor.from_pretrained(model_dir), batch, 2), threads, seconds)

def bench_cross_base(threads: int, batch: int) -> dict[str, Any]:
    """`bench_cross` on full-size BLIP-base (random weights, random pixels): one batch each way."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig()).eval()
    size = model.config.vision_config.image_size
    return bench_cross(model, [torch.randn(batch, 3, size, size)], threads, 0.0)

def bench_beam_cache(threads: int, batch: int, seconds: float, config: Any = None) -> dict[str, Any]:
    """Full-size ViT-GPT2 (ViT-B/16 + GPT-2, random weights), beam 4, 16 tokens: transformers' cache
    vs `BeamCache` (no per-step copy of the cross-attention cache), in turn on the same model and pixels."""
    import torch
    from transformers import GPT2Config, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    from pipeline.models.generation import beam_cache

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = config or VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), GPT2Config(add_cross_attention=True))
    model = VisionEncoderDecoderModel(config).eval()
    eos = model.config.decoder.eos_token_id
    size = model.config.encoder.image_size
    pv = torch.randn(batch, 3, size, size)
    gen = {"num_beams": 4, "max_new_tokens": 16, "min_new_tokens": 16, "decoder_start_token_id": eos,
           "pad_token_id": eos, "eos_token_id": eos}

    def run(pv: Any, ours: bool) -> Any:
        with torch.inference_mode():
            return model.generate(pixel_values=pv, **gen, **({"past_key_values": beam_cache()} if ours else {}))

    same = torch.equal(run(pv, False), run(pv, True))
    rates = each_way(run, [pv], len, seconds)
    return {"stock_img_s": rates["stock"], "capfilt_img_s": rates["capfilt"], "ratio": rates["ratio"],
            "same_tokens": same, "batch_size": batch, "num_beams": 4}

def bench_itm_cross(threads: int, images: int, texts: int, seconds: float, config: Any = None) -> dict[str, Any]:
    """BLIP-base ITM's text encoder (full-size config unless given, random weights), `texts` texts per image against
    the images' embeddings: transformers' way (the embeddings repeated per text, K/V projected per text)
    vs capfilt's (K/V once per image), in turn on the same model and inputs."""
    import torch
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from pipeline.models.blip_attention import SharedCrossAttention, stock_attention

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(config or BlipConfig()).eval()
    shared = SharedCrossAttention.of(model)
    tokens = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2 + 1
    emb = torch.randn(images, tokens, model.config.vision_config.hidden_size)
    ids = torch.randint(1000, 2000, (images * texts, 20))
    rows = torch.arange(images).repeat_interleave(texts)

    def run(inputs: tuple[Any, Any], ours: bool) -> Any:
        with torch.inference_mode():
            if ours:
                with shared.session(images, rows=rows):
                    return model.text_encoder(input_ids=ids, encoder_hidden_states=emb).last_hidden_state
            with stock_attention(model):
                return model.text_encoder(input_ids=ids, encoder_hidden_states=emb[rows]).last_hidden_state

    both = (ids, emb)
    diff = float((run(both, False) - run(both, True)).abs().max())
    rates = each_way(run, [both], lambda _: images * texts, seconds)
    return {"stock_texts_s": rates["stock"], "capfilt_texts_s": rates["capfilt"], "ratio": rates["ratio"],
            "max_abs_diff": diff, "images": images, "texts_per_image": texts}

def bench_pipeline(inputs: str, out: Path, model: str, threads: int, batch: int,
                   extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The whole capfilt caption job (read, decode, model, write) on the local Ray started by main()."""
    from jobs.caption import JOB
    from pipeline.config import load_config
    from pipeline.job import build_job
    from pipeline.runner.run import run_job

    cfg = load_config(None, [
        f"caption.model={model}", "caption.device=cpu", "caption.dtype=float32", "caption.strategy=greedy",
        f"caption.max_new_tokens={GEN['max_new_tokens']}", f"caption.min_new_tokens={GEN['min_new_tokens']}",
        f"caption.batch_size={batch}", f"caption.num_threads={threads}", "caption.num_cpus=1",
        "decode.num_cpus=0.25", f"decode.batch_size={batch}", f"input.rows_per_block={batch}",
        "run.progress=none", *extra,
    ], defaults=JOB.defaults)
    with PeakRss() as mem:
        summary = run_job(build_job(JOB, cfg), [inputs], str(out), cfg)
    return {"img_s": summary.images_per_s, "steady_img_s": summary.steady_images_per_s, "rows": summary.rows,
            "seconds": summary.seconds, "first_block_s": summary.first_block_s, "peak_rss": mem.peak,
            "peak_pss": mem.peak_pss, "peak_breakdown_mib": mem.breakdown, "stages": summary.stages}

def bench_bad_rows(n: int) -> dict[str, Any]:
    """The cost of a bad row: `n` undecodable images (non-images, truncated and corrupt JPEGs) through
    DecodeImages as a run decodes them (in the isolated child), against `n` good web JPEGs."""
    import time

    from pipeline.config import DecodeConfig
    from pipeline.decode.geometry import Target
    from pipeline.schema import ERROR, IMAGE, OK, STATUS
    from pipeline.stages.decode import DecodeImages

    good = web_jpegs(16, seed=5)
    bad = [b"<html>not an image</html>", good[0][: len(good[0]) // 3], good[1][:200] + b"\x00" * 5000]
    stage = DecodeImages(DecodeConfig(), (Target("p", 384, 384),))

    def per_row(datas: list[bytes]) -> tuple[float, list[str]]:
        batch = {STATUS: np.array([OK] * len(datas), dtype=object), ERROR: np.full(len(datas), None, dtype=object),
                 IMAGE: np.array(datas, dtype=object)}
        stage(dict(batch))  # warm: the decoder child starts
        start = time.perf_counter()
        out = stage(batch)
        return (time.perf_counter() - start) / len(datas), sorted(set(out[STATUS]))

    bad_s, statuses = per_row([bad[i % len(bad)] for i in range(n)])
    good_s, _ = per_row([good[i % len(good)] for i in range(n)])
    return {"rows": n, "bad_ms_per_row": bad_s * 1e3, "good_ms_per_row": good_s * 1e3, "bad_statuses": statuses}


def bench_driver_memory(work: Path, images: int, small: int, rows_per_part: int) -> dict[str, Any]:
    """The driver's peak RSS for the same images as shards of `small` rows and as shards 10× larger, with
    output.rows_per_part below the large shards, and the large shards once more without parts (every
    row of an open shard held until its commit): the `embed` job with tiny CLIP towers and ViT-L/14's
    768-d embeddings, so a row is as wide as a real CLIP's (image and alt-text embeddings)."""
    from jobs.embed import JOB
    from pipeline.config import load_config
    from pipeline.job import build_job
    from pipeline.models.random_weights import ensure_tiny
    from pipeline.runner.run import run_job

    ensure_tiny("clip-wide")  # built before the first run, not in its driver while measured
    pool = web_jpegs(64, seed=6)
    out: dict[str, Any] = {"images": images, "rows_per_part": rows_per_part, "embedding_dim": 768}
    for label, per_shard, part in (("1x", small, rows_per_part), ("10x", small * 10, rows_per_part),
                                   ("10x_no_parts", small * 10, small * 10)):
        folder = work / f"drv-{per_shard}"
        shards = (write_shards((pool[i % len(pool)] for i in range(images)), folder, per_shard)
                  if not folder.exists() else str(folder / "*.tar"))
        cfg = load_config(None, ["clip.model=tiny:clip-wide", "clip.device=cpu", "clip.num_cpus=0.5",
                                 "clip.batch_size=64", "decode.num_cpus=0.5", "run.progress=none",
                                 f"output.rows_per_part={part}", "input.rows_per_block=64"])
        with PeakRss() as mem:
            summary = run_job(build_job(JOB, cfg), [shards], str(work / f"drv-out-{label}"), cfg)
        out[f"shard_rows_{label}"] = per_shard
        out[f"driver_peak_rss_{label}"] = mem.peak_driver
        out[f"rows_{label}"] = summary.rows
    out["ratio"] = out["driver_peak_rss_10x"] / out["driver_peak_rss_1x"]
    out["no_parts_ratio"] = out["driver_peak_rss_10x_no_parts"] / out["driver_peak_rss_1x"]
    return out


_READ_PEAK = """
import json, sys
from pipeline.config import InputConfig
from pipeline.io.readers import read_shard
from pipeline.io.shards import Shard
rows = sum(t.num_rows for t in read_shard(Shard(sys.argv[1], "parquet"), InputConfig(), {})) - 1 if sys.argv[1:] else 0
# VmHWM: this process's own peak (ru_maxrss keeps the forking parent's RSS across exec on Linux)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rows": rows, "peak_mib": hwm / 1024}))
"""

_WRITE_ROW_GROUP = """
import sys
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
path, n, size, pages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(7)
table = pa.table({"jpg": pa.array([rng.bytes(size) for _ in range(n)], pa.binary()),
                  "txt": [f"alt text {i}" for i in range(n)]})
kw = {"write_batch_size": 8, "data_page_size": 1 << 20} if pages == "small" else {}
pq.write_table(table, path, row_group_size=n, **kw)
"""


def bench_parquet_memory(work: Path, rows: int, image_bytes: int) -> dict[str, Any]:
    """A Parquet shard's read (read_shard, each in a fresh process: its peak RSS, and that of a process
    that only imports) with one row group of `rows` and of 10× `rows` images, written in small pages; and
    the 10× file as pyarrow's defaults write it (1,024 rows a page), where the page bounds the read.
    The files are written by another process, so that this one (a later part's driver) never holds them."""
    import json
    import os
    import subprocess
    import sys

    def python(script: str, *args: str) -> str:
        return subprocess.run([sys.executable, "-c", script, *args], check=True, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()}).stdout

    out: dict[str, Any] = {"image_bytes": image_bytes, "imports_peak_mib": json.loads(python(_READ_PEAK))["peak_mib"]}
    for label, n, pages in (("1x", rows, "small"), ("10x", 10 * rows, "small"), ("10x_default_pages", 10 * rows, "default")):
        path = work / f"rg-{label}.parquet"
        python(_WRITE_ROW_GROUP, str(path), str(n), str(image_bytes), pages)
        got = json.loads(python(_READ_PEAK, str(path)))
        assert got["rows"] == n, got
        out[f"row_group_mib_{label}"] = path.stat().st_size / 2**20
        out[f"read_peak_mib_{label}"] = got["peak_mib"]
        path.unlink()
    out["ratio"] = out["read_peak_mib_10x"] / out["read_peak_mib_1x"]
    return out


def bench_estimate(work: Path, images: int, sample: int, name: str = "est") -> dict[str, Any]:
    """`capfilt estimate` on a sample, then the whole run it predicts (tiny BLIP captioning, the config of
    `make demo`), side by side in one Ray: the predicted wall time against the measured one. With a small
    sample (64 of 800: issue #26's case) decode runs ahead while the model actor loads, and the sample's
    overall rate overstates the run's: the projection must come from the bottleneck stage."""
    from jobs.caption import JOB
    from pipeline.config import load_config
    from pipeline.job import build_job
    from pipeline.runner.estimate import estimate
    from pipeline.runner.run import run_job
    from tests.fixtures.paths import CONFIGS

    shards = write_shards(iter_web_jpegs(images, seed=3), work / f"{name}-in", 64)
    cfg = load_config(str(CONFIGS / "tiny.yaml"), ["run.progress=none"], defaults=JOB.defaults)
    job = build_job(JOB, cfg)
    est = estimate(job, [shards], cfg, sample)
    summary = run_job(job, [shards], str(work / f"{name}-out"), cfg)
    predicted = est["as_sampled"]["wall_s"]
    return {"images": images, "sample": sample, "predicted_s": predicted, "actual_s": summary.seconds,
            "error": predicted / summary.seconds - 1, "images_counted": est["input"]["images"],
            "images_actual": summary.rows, "bottleneck": est["bottleneck"], "sample_s": est["sample"]["seconds"]}


MEMORY_SHARD = 64  # images per shard of the memory runs: 1× is 64 shards, 32 model batches

VLMS = ("llava", "florence2", "qwen2-vl", "smolvlm")


def bench_vlm(work: Path, name: str, n: int, batch: int) -> dict[str, Any]:
    """A vision-language captioner (tiny:<name>) alone — its processor and `generate` on decoded images,
    batched, as its model card runs it — beside the capfilt caption job on the same JPEGs (exact decode,
    greedy, 20 tokens), and how many captions the two wrote alike."""
    import time

    import pyarrow.parquet as pq
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from pipeline.config import CaptionConfig
    from pipeline.models.random_weights import ensure_tiny
    from pipeline.models.vlm import FAMILIES, load_processor, new_tokens, prompt_text, vlm_inputs

    path = str(ensure_tiny(name))
    torch.set_num_threads(1)
    processor = load_processor(path, CaptionConfig(model=path))
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    kind = model.config.model_type
    text = prompt_text(processor, kind, FAMILIES[kind])
    datas = web_jpegs(n, seed=5)
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]

    def caption(batch_images: list[Any]) -> list[str]:
        inputs = vlm_inputs(processor, kind, batch_images, [text] * len(batch_images))
        with torch.inference_mode():
            out = model.generate(**inputs, **GEN)
        return [t.strip() for t in processor.batch_decode(new_tokens(model, inputs, out), skip_special_tokens=True)]

    caption(images[:batch])  # warm-up
    start = time.perf_counter()
    alone = [c for i in range(0, n, batch) for c in caption(images[i : i + batch])]
    alone_img_s = n / (time.perf_counter() - start)
    per_shard = 2 * batch  # several shards: blocks reach the driver as shards complete (a steady rate)
    shards = write_shards(datas, work / f"vlm-{name}", per_shard)
    pipe = bench_pipeline(shards, work / f"out-vlm-{name}", f"tiny:{name}", 1, batch,
                          ("decode.fast=false", "decode.draft=false"))
    got = {r["key"]: r["caption"] for r in pq.read_table(work / f"out-vlm-{name}" / "captions").to_pylist()}
    same = sum(got.get(f"{i // per_shard:05d}{i % per_shard:05d}") == c for i, c in enumerate(alone))
    # The caption stage's own time in the pipeline (Ray's per-operator stats: processor + generate on its
    # blocks), so the model's rate inside the pipeline is compared, not the run's start-up; the whole run's
    # rate is reported beside it.
    busy = next((v["udf_s"] for k, v in pipe["stages"].items() if "CaptionImages" in k), 0.0)
    stage = pipe["rows"] / busy if busy else float("nan")
    return {"params_m": _params(path), "images": n, "batch_size": batch, "model_alone_img_s": alone_img_s,
            "pipeline_img_s": pipe["img_s"], "pipeline_stage_img_s": stage, "pipeline_first_block_s": pipe["first_block_s"],
            "pipeline_vs_model_alone": stage / alone_img_s, "same_captions": same}


CPU_PARTS = ("startup", "plan", "feed", "stage", "dedup", "decode", "cross", "small", "tiny", "memory", "faults",
             "estimate", "vlm")

EXTRA_PARTS = ("cross-base",)  # only when asked for (`--only cross-base`): full-size BLIP-base and ViT-GPT2, ~3 min

def cpu_suite(quick: bool, work: Path, parts: tuple[str, ...] = CPU_PARTS) -> dict[str, Any]:
    from pipeline.config import load_config
    from pipeline.models.random_weights import ensure_tiny
    from pipeline.runner import ray_start

    scale = 0.25 if quick else 1.0
    secs = 2.0 if quick else 8.0
    small, tiny = str(ensure_tiny("blip-small")), str(ensure_tiny("blip"))
    datas = web_jpegs(int(64 * scale) or 8)
    res: dict[str, Any] = {}
    if "startup" in parts:  # first, before this process starts its own Ray: whole commands in subprocesses
        from bench.startup import bench_startup

        res["startup"] = bench_startup(work, quick)
    if "plan" in parts:  # no Ray: the driver's plan against S3 (moto)
        from bench.plan import bench_plan

        res["plan"] = bench_plan(4000 if quick else 40_000)
    if "feed" in parts:  # its own Ray (2 CPUs), before the suite's
        from bench.feed import bench_feed

        res["feed"] = bench_feed(work, int(2400 * scale) or 256, secs)
    if "dedup" in parts:  # its own Ray (2 CPUs), before the suite's
        from bench.dedup import bench_dedup

        res["dedup"] = bench_dedup(work, 100_000 if quick else 1_000_000)
    if "stage" in parts:  # its own Ray (2 CPUs), before the suite's
        from bench.stage import bench_stage

        res["stage"] = bench_stage(work, int(3840 * scale) or 512, 1 if quick else 3)
    if "decode" in parts:
        res["decode"] = bench_decode(datas, small, secs)
    if "cross" in parts:
        res["cross"] = bench_cross_small(datas, small, 1, 8, secs)
        res["itm_cross"] = bench_itm_cross(1, 8, 4, secs)
    if "cross-base" in parts:
        res["cross_base"] = bench_cross_base(2, 8)
        res["beam_cache"] = bench_beam_cache(2, 16, 20.0)
    if "faults" in parts:
        res["bad_rows"] = bench_bad_rows(int(1000 * scale) or 50)
        res["parquet_memory"] = bench_parquet_memory(work, int(512 * scale) or 32, 100_000)
    if not {"small", "tiny", "memory", "faults", "estimate", "vlm"} & set(parts):
        return res  # no pipeline runs: no Ray
    ray_cfg = load_config(None, ["run.num_cpus=2"])
    ray_start.init_ray(ray_cfg)  # as the jobs start it
    try:
        warm = write_shards(datas[:4], work / "warm", 4)
        bench_pipeline(warm, work / "out-warm", "tiny:blip", 1, 4)  # start Ray's workers once
        for name, model, model_dir, batch, n in [
            ("small", "tiny:blip-small", small, 8, int(240 * scale) or 16),
            ("tiny", "tiny:blip", tiny, 128, int(2048 * scale) or 64),
        ]:
            if name not in parts:
                continue
            shards = write_shards(iter_web_jpegs(n, seed=1), work / f"in-{name}", max(32, batch))
            loop = bench_loop(datas, model_dir, 1, secs)
            alone = bench_model_alone(datas, model_dir, 1, batch, secs)
            pipe = bench_pipeline(shards, work / f"out-{name}", model, 1, batch)
            steady = pipe["steady_img_s"] or pipe["img_s"]
            res[name] = {"params_m": _params(model_dir), "batch_size": batch, "threads": 1, "loop_img_s": loop,
                         "model_alone_img_s": alone, "pipeline_img_s": pipe["img_s"], "pipeline_steady_img_s": steady,
                         "pipeline_first_block_s": pipe["first_block_s"], "pipeline_rows": pipe["rows"],
                         "pipeline_vs_model_alone": steady / alone, "pipeline_vs_loop": steady / loop,
                         "pipeline_total_vs_model_alone": pipe["img_s"] / alone, "model_alone_vs_loop": alone / loop}
        if "memory" in parts:
            # 1× must already reach the steady state, every stage busy at once: the model actor takes
            # ~10 s to start while decode runs ahead, and its memory settles ~5 s after its first batch.
            # A shorter 1× run measures start-up, not data size (at 256 images the model was still
            # loading at the 1× peak and 10× looked like +32 %; at 2,048, +17 %).
            n = int(4096 * scale) or 16
            per_shard = max(MEMORY_SHARD * n // 4096, 2)
            pool = web_jpegs(min(n, 256), seed=2)  # distinct JPEGs, cycled: the decode work is the same
            one_glob = write_shards((pool[i % len(pool)] for i in range(n)), work / "mem-1x", per_shard)
            ten_glob = linked_copies(work / "mem-1x", work / "mem-10x", 10)
            runs = {label: bench_pipeline(shards, work / f"out-mem-{label}", "tiny:blip", 1, 128)
                    for label, shards in [("1x", one_glob), ("10x", ten_glob)]}
            one, ten = runs["1x"], runs["10x"]
            res["memory"] = {"images_1x": n, "images_10x": 10 * n, "images_per_shard": per_shard,
                             "peak_rss_1x": one["peak_rss"], "peak_rss_10x": ten["peak_rss"],
                             "rss_ratio": ten["peak_rss"] / one["peak_rss"],
                             "peak_pss_1x": one["peak_pss"], "peak_pss_10x": ten["peak_pss"],
                             "ratio": ten["peak_pss"] / one["peak_pss"],
                             "breakdown_1x_mib": one["peak_breakdown_mib"], "breakdown_10x_mib": ten["peak_breakdown_mib"]}
        if "vlm" in parts:
            for name in VLMS:
                for size, n in [("", int(192 * scale) or 16), ("-small", int(96 * scale) or 8)]:
                    res[f"vlm:{name}{size}"] = bench_vlm(work, name + size, n, 8)
        if "estimate" in parts:
            res["estimate"] = bench_estimate(work, int(2048 * scale) or 256, int(256 * scale) or 64)
            res["estimate_ahead"] = bench_estimate(work, int(800 * scale) or 200, 64, "ahead")
        if "faults" in parts:
            res["driver_memory"] = bench_driver_memory(work, int(5120 * scale) or 640, int(256 * scale) or 32,
                                                       int(256 * scale) or 32)
    finally:
        ray_start.shutdown(ray_cfg)
    return res

def _params(model_dir: str) -> float:
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        return round(sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()) / 1e6, 2)
