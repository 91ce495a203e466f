"""Benchmarks, side by side in one run: `python -m pipeline.bench` (make bench) / `--device cuda` (make bench-gpu).

CPU (default): realistic web JPEGs (500–1600 px, from real photos) in webdataset shards, then
  - decode: PIL full decode + the HF image processor  vs  capfilt's decode (fast path), per core,
    with the embedding fidelity of the two paths (cosine of a BLIP vision tower's pooled output);
  - captioning, for a ~16M-parameter BLIP at 384 px ("small") and the tiny test BLIP:
    the seeds' per-image loop (open, processor, generate, decode)  vs  the model alone, batched, on
    pre-decoded tensors  vs  the whole capfilt pipeline (read, decode, model, write) on Ray Data,
    all with the same threads, batch size and generation settings;
  - peak memory of the pipeline (driver + Ray workers, sum of PSS and of RSS) at N and 10×N images.
GPU (`--device cuda`): full-size configs (BLIP base/large, CLIP ViT-B/32, ViT-L/14; random weights,
  no download), bf16: model-only img/s, then the real jobs with the presets of configs/ end to end
  (img/s, GPU utilisation sampled with NVML, busy time per Ray Data operator).
Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np

log = logging.getLogger("capfilt.bench")


# ---------------------------------------------------------------- data


def iter_web_jpegs(n: int, seed: int = 0) -> Iterator[bytes]:
    """n JPEGs of web size (long side 500–1600 px, quality 80–95) cut from the real photos, one by one."""
    from PIL import Image

    from pipeline.samples import photos

    rng = np.random.default_rng(seed)
    base = [Image.fromarray(p) for p in photos(1600)]
    for i in range(n):
        im = base[i % len(base)]
        long = int(rng.integers(500, 1601))
        aspect = float(rng.uniform(0.6, 1.6))
        w, h = (long, int(long / aspect)) if aspect >= 1 else (int(long * aspect), long)
        buf = io.BytesIO()
        im.resize((w, h), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
        yield buf.getvalue()


def web_jpegs(n: int, seed: int = 0) -> list[bytes]:
    return list(iter_web_jpegs(n, seed))


def write_shards(datas: Iterable[bytes], folder: Path, per_shard: int) -> str:
    """Webdataset shards of `per_shard` images, written as the images come.

    Streamed, so a benchmark's driver never holds the whole data set: glibc keeps the heap of freed
    JPEGs, and that heap would be counted as the pipeline's memory (it was: +0.4 GiB at 2,560 images)."""
    import tarfile

    from pipeline.samples import add_member

    folder.mkdir(parents=True, exist_ok=True)
    tar: tarfile.TarFile | None = None
    for n, data in enumerate(datas):
        shard, i = divmod(n, per_shard)
        if i == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(folder / f"{shard:05d}.tar", "w")
        assert tar is not None
        add_member(tar, f"{shard:05d}{i:05d}.jpg", data)
        add_member(tar, f"{shard:05d}{i:05d}.txt", b"an image from the web")
    if tar is not None:
        tar.close()
    return str(folder / "*.tar")


# ---------------------------------------------------------------- measuring


def rate(fn: Callable[[], int], min_seconds: float = 0.0) -> tuple[float, float]:
    """Runs fn (which returns how many images it did) until min_seconds; → (img/s, seconds)."""
    start, n = time.perf_counter(), 0
    while True:
        n += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed, elapsed


class _Sampler:
    """A daemon thread that samples (`_run`, polling `_stop`) for the duration of a `with` block."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakRss(_Sampler):
    """Peak memory of this process and its descendants (Ray's raylet and workers), sampled every 100 ms.

    `peak` sums RSS, which counts a shared page (torch's libraries, mapped by every worker) once per
    process; `peak_pss` sums the proportional set size, which splits each shared page among the
    processes that map it: the memory the run really holds."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = self.peak_pss = 0
        self.breakdown: list[tuple[str, int]] = []  # (process, PSS in MiB) at the PSS peak

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.1):
            rss = pss = 0
            parts = []
            for p in [me, *me.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                    p_pss = getattr(info, "pss", info.rss)
                    rss, pss = rss + info.rss, pss + p_pss
                    parts.append((" ".join(p.cmdline())[:60].strip(), p_pss >> 20))
                except psutil.Error:
                    pass
            self.peak = max(self.peak, rss)
            if pss > self.peak_pss:
                self.peak_pss, self.breakdown = pss, sorted(parts, key=lambda x: -x[1])



class GpuSampler(_Sampler):
    """GPU utilisation (%) sampled with NVML every 100 ms; empty where NVML is missing."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[int] = []

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML bindings: nvidia-smi reads the same counter, if it is there
            self._run_smi()
            return
        while not self._stop.wait(0.1):
            self.samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def _run_smi(self) -> None:
        import shutil

        if shutil.which("nvidia-smi") is None:
            return
        cmd = ["nvidia-smi", "-i", "0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if self._stop.is_set():
                    proc.kill()
                    break
                if line.strip().isdigit():
                    self.samples.append(int(line))

    def busy(self) -> float | None:
        """Mean utilisation over the middle 80 % of the samples (steady state)."""
        s = self.samples[len(self.samples) // 10 : len(self.samples) - len(self.samples) // 10] or self.samples
        return float(np.mean(s)) if s else None


# ---------------------------------------------------------------- decode


def bench_decode(datas: list[bytes], model_dir: str, seconds: float) -> dict[str, Any]:
    """Per core: PIL full decode + processor  vs  capfilt's decode + the same normalisation."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, BlipForConditionalGeneration

    from pipeline.image import Target, decode

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


# ---------------------------------------------------------------- captioning


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


def each_way(run: Callable[[Any, bool], object], inputs: list[Any], size: Callable[[Any], int],
             seconds: float) -> dict[str, float]:
    """transformers' way (`run(x, False)`), then capfilt's (`run(x, True)`), each for `seconds` over
    `inputs` in turn → {"stock", "capfilt", "ratio"}: items (of `size(x)`) per second."""

    def timed(ours: bool) -> float:
        turn = itertools.cycle(inputs)

        def one() -> int:
            x = next(turn)
            run(x, ours)
            return size(x)

        return rate(one, seconds)[0]

    stock, ours = timed(False), timed(True)
    return {"stock": stock, "capfilt": ours, "ratio": ours / stock}


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


def bench_pipeline(inputs: str, out: Path, model: str, threads: int, batch: int) -> dict[str, Any]:
    """The whole capfilt caption job (read, decode, model, write) on the local Ray started by main()."""
    from jobs import caption
    from pipeline.config import load_config
    from pipeline.run import run_job

    cfg = load_config(None, [
        f"caption.model={model}", "caption.device=cpu", "caption.dtype=float32", "caption.strategy=greedy",
        f"caption.max_new_tokens={GEN['max_new_tokens']}", f"caption.min_new_tokens={GEN['min_new_tokens']}",
        f"caption.batch_size={batch}", f"caption.num_threads={threads}", "caption.num_cpus=1",
        "decode.num_cpus=0.25", f"decode.batch_size={batch}", f"input.rows_per_block={batch}",
        "run.progress=none",
    ], job="caption")
    with PeakRss() as mem:
        summary = run_job(caption.build(cfg), [inputs], str(out), cfg)
    return {"img_s": summary.images_per_s, "steady_img_s": summary.steady_images_per_s, "rows": summary.rows,
            "seconds": summary.seconds, "first_block_s": summary.first_block_s, "peak_rss": mem.peak,
            "peak_pss": mem.peak_pss, "peak_breakdown_mib": mem.breakdown}


# ---------------------------------------------------------------- CPU suite


MEMORY_SHARD = 64  # images per shard of the memory runs: 1× is 64 shards, 32 model batches
CPU_PARTS = ("decode", "cross", "small", "tiny", "memory")
EXTRA_PARTS = ("cross-base",)  # only when asked for (`--only cross-base`): full-size BLIP-base and ViT-GPT2, ~3 min


def cpu_suite(quick: bool, work: Path, parts: tuple[str, ...] = CPU_PARTS) -> dict[str, Any]:
    import ray

    from pipeline.models.tiny import ensure_tiny

    scale = 0.25 if quick else 1.0
    secs = 2.0 if quick else 8.0
    small, tiny = str(ensure_tiny("blip-small")), str(ensure_tiny("blip"))
    datas = web_jpegs(int(64 * scale) or 8)
    res: dict[str, Any] = {}
    if "decode" in parts:
        res["decode"] = bench_decode(datas, small, secs)
    if "cross" in parts:
        res["cross"] = bench_cross_small(datas, small, 1, 8, secs)
        res["itm_cross"] = bench_itm_cross(1, 8, 4, secs)
    if "cross-base" in parts:
        res["cross_base"] = bench_cross_base(2, 8)
        res["beam_cache"] = bench_beam_cache(2, 16, 20.0)
    if not {"small", "tiny", "memory"} & set(parts):
        return res  # no pipeline runs: no Ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False)
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
            ten_glob = _linked_copies(work / "mem-1x", work / "mem-10x", 10)
            runs = {label: bench_pipeline(shards, work / f"out-mem-{label}", "tiny:blip", 1, 128)
                    for label, shards in [("1x", one_glob), ("10x", ten_glob)]}
            one, ten = runs["1x"], runs["10x"]
            res["memory"] = {"images_1x": n, "images_10x": 10 * n, "images_per_shard": per_shard,
                             "peak_rss_1x": one["peak_rss"], "peak_rss_10x": ten["peak_rss"],
                             "rss_ratio": ten["peak_rss"] / one["peak_rss"],
                             "peak_pss_1x": one["peak_pss"], "peak_pss_10x": ten["peak_pss"],
                             "ratio": ten["peak_pss"] / one["peak_pss"],
                             "breakdown_1x_mib": one["peak_breakdown_mib"], "breakdown_10x_mib": ten["peak_breakdown_mib"]}
    finally:
        ray.shutdown()
    return res


def _linked_copies(src: Path, dst: Path, times: int) -> str:
    """`times` × the shards of src under new names, as symlinks: 10× the data without writing it."""
    dst.mkdir(parents=True, exist_ok=True)
    shards = sorted(src.glob("*.tar"))
    for k in range(times):
        for shard in shards:
            (dst / f"{k:03d}-{shard.name}").symlink_to(shard.resolve())
    return str(dst / "*.tar")


def _params(model_dir: str) -> float:
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        return round(sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()) / 1e6, 2)



def _side_row(what: str, c: dict[str, Any], unit: str = "img_s") -> str:
    """A row of one `each_way` figure; `same_tokens`, where measured, is said in the row."""
    if "same_tokens" in c:
        what += " (same captions)" if c["same_tokens"] else " (CAPTIONS DIFFER)"
    digits = 2 if unit == "img_s" else 1
    return (f"| {what} ({unit.replace('_', '/')}) | {c[f'stock_{unit}']:.{digits}f} | {c[f'capfilt_{unit}']:.{digits}f} "
            f"| {c['ratio']:.2f}× | |")


def cpu_table(res: dict[str, Any]) -> str:
    lines = ["| measure | baseline | capfilt | ratio | target |", "|---|---|---|---|---|"]
    if "decode" in res:
        d = res["decode"]
        lines += [
            f"| decode+resize per core, web JPEGs → {d['target_px']} px (img/s) | PIL + processor "
            f"{d['baseline_img_s']:.0f} | {d['capfilt_img_s']:.0f} | {d['ratio']:.2f}× | ≥ 3× |",
            f"| fidelity of that decode (embedding cos, min / mean) | | {d['fidelity_cos_min']:.4f} / "
            f"{d['fidelity_cos_mean']:.4f} | | ≥ 0.99 |",
        ]
    for part, name in (("cross", "small BLIP"), ("cross_base", "BLIP-base (full size, 2 threads)")):
        if part in res:
            c = res[part]
            lines.append(_side_row(f"{name} ({c['params_m']}M, {c['image_size']} px, batch {c['batch_size']}), beam "
                                   f"{c['num_beams']}, model alone: transformers' attention vs capfilt's", c))
    if "beam_cache" in res:
        c = res["beam_cache"]
        lines.append(_side_row(f"ViT-GPT2 (full size, 2 threads, batch {c['batch_size']}), beam {c['num_beams']}, whole "
                               "generate: cross-attention cache copied every step vs left in place", c))
    if "itm_cross" in res:
        c = res["itm_cross"]
        lines.append(_side_row(f"BLIP-base ITM text encoder, {c['images']} images × {c['texts_per_image']} texts: image K/V "
                               f"per text vs once per image (max abs diff {c['max_abs_diff']:.1e})", c, "texts_s"))
    for name in ("small", "tiny"):
        if name not in res:
            continue
        r = res[name]
        lines += [
            f"| {name} BLIP ({r['params_m']}M, batch {r['batch_size']}): pipeline steady state vs model alone (img/s) "
            f"| {r['model_alone_img_s']:.1f} | {r['pipeline_steady_img_s']:.1f} | {r['pipeline_vs_model_alone']:.2f}× "
            "| ≥ 0.85× |",
            f"| {name} BLIP: pipeline incl. startup ({r['pipeline_first_block_s']:.1f}s to first block) vs model alone "
            f"| {r['model_alone_img_s']:.1f} | {r['pipeline_img_s']:.1f} | {r['pipeline_total_vs_model_alone']:.2f}× | |",
            f"| {name} BLIP: pipeline steady state vs per-image loop (img/s) | {r['loop_img_s']:.1f} "
            f"| {r['pipeline_steady_img_s']:.1f} | {r['pipeline_vs_loop']:.2f}× | {'≥ 1.8×' if name == 'small' else '≥ 10×'} |",
        ]
    if "memory" in res:
        m = res["memory"]
        span = f"{m['images_1x']} → {m['images_10x']} images"
        lines += [
            f"| peak memory (sum of PSS) of driver + Ray, {span} (GiB) | {m['peak_pss_1x'] / 2**30:.2f} "
            f"| {m['peak_pss_10x'] / 2**30:.2f} | {m['ratio']:.2f}× | ≤ 1.1× |",
            f"| the same as a sum of RSS (shared pages counted once per process) | {m['peak_rss_1x'] / 2**30:.2f} "
            f"| {m['peak_rss_10x'] / 2**30:.2f} | {m['rss_ratio']:.2f}× | |",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- GPU suite


# ViT-L (BLIP-large's and CLIP L/14's vision tower) and CLIP L/14's text tower, shared by the model-only
# configs and the full-size models the end-to-end runs build.
LARGE_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12)


def gpu_models(tiny: bool) -> dict[str, Any]:
    """Full-size configs of the real classes (random weights), or tiny ones to test this code on CPU."""
    from transformers import BlipConfig, CLIPConfig

    if tiny:
        small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        return {
            "blip-base": ("blip", BlipConfig(vision_config={**small, "image_size": 64}, text_config=small)),
            "clip-b32": ("clip", CLIPConfig(vision_config={**small, "image_size": 64, "patch_size": 32},
                                             text_config=small, projection_dim=32)),
        }
    return {
        "blip-base": ("blip", BlipConfig()),  # the defaults are blip-image-captioning-base
        "blip-large": ("blip", BlipConfig(vision_config=LARGE_VISION)),
        "clip-b32": ("clip", CLIPConfig()),  # the defaults are ViT-B/32
        "clip-l14": ("clip", CLIPConfig(vision_config={**LARGE_VISION, "patch_size": 14, "image_size": 224},
                                        text_config=L14_TEXT, projection_dim=768)),
    }


def build_gpu_model(kind: str, config: Any, device: str) -> Any:
    """A full-size model of the real class with random weights, bf16 on CUDA, in eval mode."""
    import torch
    from transformers import BlipForConditionalGeneration, CLIPModel

    torch.manual_seed(0)
    model: Any = (BlipForConditionalGeneration if kind == "blip" else CLIPModel)(config)
    return model.to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32).eval()


# Model-only variants: "" as capfilt runs the model (BLIP: SDPA vision tower and shared cross-attention,
# blip_attention.py); "stock": transformers' own BLIP attention; "compile": the vision tower through
# torch.compile.
VARIANTS = ("", "stock", "compile")


def bench_gpu_model(kind: str, model: Any, device: str, seconds: float, batch: int, variant: str = "") -> dict[str, Any]:
    """Model-only throughput: uint8 in, normalised on the device; `compile` replaces the model's vision
    tower, as `<model>.compile: true` does (run it last)."""
    import torch

    from pipeline.models import blip_attention

    dtype = model.dtype
    attention = str(model.config._attn_implementation)
    if variant == "compile":
        model.vision_model = torch.compile(model.vision_model, dynamic=False)
    shared = blip_attention.install(model) if kind == "blip" else None
    size = model.config.vision_config.image_size
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    mean = torch.tensor([0.481, 0.458, 0.408], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.269, 0.261, 0.276], device=device).view(1, 3, 1, 1)

    def step() -> int:
        pv = ((pixels.float() / 255 - mean) / std).to(dtype)
        with torch.inference_mode():
            if shared is not None:
                with shared.session(batch) if variant != "stock" else blip_attention.stock_attention(model):
                    model.generate(pixel_values=pv, num_beams=3, max_new_tokens=20, min_new_tokens=5)
            else:
                model.get_image_features(pixel_values=pv)
        if device == "cuda":
            torch.cuda.synchronize()
        return batch

    step()
    if variant == "compile":
        step()
    with GpuSampler() as gpu:
        img_s, secs = rate(step, seconds)
    return {"model_only_img_s": img_s, "batch_size": batch, "dtype": str(dtype), "seconds": secs,
            "gpu_busy_pct": gpu.busy(), "image_size": size, "attention": attention, "variant": variant or "capfilt"}


# Model-only batch sizes (GPU): generation is launch-bound at small batches, so BLIP is swept wide.
GPU_BATCHES = {"blip": (64, 256, 512), "clip": (256, 1024)}


def gpu_suite(device: str, tiny: bool, seconds: float, batches: tuple[int, ...] | None, compile: bool = False,
              save: Callable[[dict[str, Any]], None] = lambda r: None) -> dict[str, Any]:
    """Model-only figures, one model and batch size at a time ("name@batch"; "+stock" for BLIP with
    transformers' own decoder beside capfilt's, "+compile" for CLIP's torch.compile'd vision tower);
    a run that fails is recorded and the others still run."""
    import torch

    res: dict[str, Any] = {}
    for name, (kind, config) in gpu_models(tiny).items():
        runs = [(b, "") for b in (batches or GPU_BATCHES[kind])]
        widest = max(b for b, _ in runs)
        if kind == "blip":
            runs.append((widest, "stock"))
        if compile and kind == "clip":
            runs.append((widest, "compile"))  # last: compiling replaces the model's tower
        model = build_gpu_model(kind, config, device)  # once per model, every batch size on it
        for batch, variant in runs:
            label = f"{name}@{batch}" + (f"+{variant}" if variant else "")
            try:
                res[label] = bench_gpu_model(kind, model, device, seconds, batch, variant)
            except Exception as e:  # an OOM or a missing kernel costs one figure, not the run
                log.exception("model-only %s failed", label)
                res[label] = {"error": f"{type(e).__name__}: {e}"}
            print(gpu_row(label, res[label]), flush=True)
            save(res)
            if device == "cuda":
                torch.cuda.empty_cache()
        del model
    return res


def gpu_row(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {name} | failed: {r['error'][:120]} | | | |"
    return f"| {name} | {r['model_only_img_s']:.1f} | {r['batch_size']} | {r['dtype']} | {_pct(r['gpu_busy_pct'])} |"


# End to end: the real jobs with the real presets from configs/, on JPEG shards, with full-size
# random-weight models saved to disk and loaded by capfilt's own loading code. name → (job, preset,
# model sections → full-size model, images on a GPU).
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# The image counts give each run ~20–40 s of steady state on an H100 (the whole suite fits in 10 minutes).
E2E: dict[str, tuple[str, str, dict[str, str], int]] = {
    "blip-base": ("caption", "blip-base.yaml", {"caption": "blip-base"}, 6_000),
    "blip-large": ("caption", "blip-large.yaml", {"caption": "blip-large"}, 4_000),
    "clip-b32": ("embed", "clip-l14.yaml", {"clip": "clip-b32"}, 50_000),
    "clip-l14": ("embed", "clip-l14.yaml", {"clip": "clip-l14"}, 30_000),
    "clean": ("clean", "clean-blip.yaml", {"caption": "blip-large", "itm": "itm-large", "clip": "clip-l14"}, 3_000),
}
TINY_MODELS = {"blip-base": "tiny:blip", "blip-large": "tiny:blip", "itm-large": "tiny:blip-itm",
               "clip-b32": "tiny:clip", "clip-l14": "tiny:clip"}


def build_full_size(name: str, out: Path, device: str) -> None:
    """A full-size model of the real class with random weights, saved with its processor (bf16 on a
    GPU): BLIP base/large captioners, the BLIP-large ITM head, CLIP ViT-B/32 and ViT-L/14. The
    tokenizer is the real bert-base-uncased one BLIP uses (CLIP's BPE files are not on disk)."""
    import torch
    import transformers
    from transformers import AutoTokenizer, BlipConfig, BlipImageProcessor, BlipProcessor, CLIPConfig, CLIPImageProcessor

    from pipeline.models.tiny import _blip_tokenizer, minilm_dir

    with torch.device(device):
        torch.manual_seed(0)
        if name.startswith(("blip", "itm")):
            tok = _blip_tokenizer()
            vision: dict[str, Any] = {"image_size": 384, **(LARGE_VISION if name.endswith("large") else {})}
            text = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, sep_token_id=tok.sep_token_id,
                        pad_token_id=tok.pad_token_id, encoder_hidden_size=vision.get("hidden_size", 768))
            cls = "BlipForImageTextRetrieval" if name.startswith("itm") else "BlipForConditionalGeneration"
            model = getattr(transformers, cls)(BlipConfig(vision_config=vision, text_config=text))
            processor: Any = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 384, "width": 384}),
                                           tokenizer=tok)
        else:
            tok = AutoTokenizer.from_pretrained(minilm_dir(), model_max_length=77)
            text = dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.cls_token_id,
                        eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
            vision = {"patch_size": 32}
            if name == "clip-l14":
                vision = {**LARGE_VISION, "patch_size": 14}
                text.update(L14_TEXT)
            model = transformers.CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                                      projection_dim=768 if name == "clip-l14" else 512))
            processor = transformers.CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)
    if device == "cuda":
        model = model.to(torch.bfloat16)
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)


def e2e_suite(device: str, tiny: bool, scale: float, work: Path, names: tuple[str, ...] | None = None,
              variants: tuple[str, ...] = (), save: Callable[[dict[str, Any]], None] = lambda r: None) -> dict[str, Any]:
    """Each entry of E2E as `capfilt <job>` runs it: img/s end to end and in steady state, GPU busy
    (NVML) during the run, and the time in each Ray Data operator (decode, each model).

    `names` picks entries; each of `variants` ("NAME:key=value[,key=value]") runs entry NAME again with
    those overrides, named "NAME[key=value,...]", beside it in the same run: an A/B of one switch. A
    run that fails is recorded with its error and the next one runs; `save` gets the results so far
    after each run (a run cut off at the box's time limit keeps what it measured)."""
    import importlib

    import ray

    from pipeline.cli import JOBS
    from pipeline.config import load_config
    from pipeline.run import run_job

    dirs: dict[str, str] = {}
    pool = web_jpegs(64 if tiny else 256, seed=4)
    per_shard = 16 if tiny else 500
    write_shards((pool[i % len(pool)] for i in range(per_shard)), work / "e2e-src", per_shard)
    res: dict[str, Any] = {}
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                 configure_logging=False)
    runs: list[tuple[str, str, list[str]]] = [(n, n, []) for n in E2E if names is None or n in names]
    for v in variants:
        base, _, sets = v.partition(":")
        if base not in E2E or "=" not in sets:
            raise ValueError(f"--e2e-variant {v!r}: expected NAME:key=value[,key=value] with NAME in {sorted(E2E)}")
        runs.append((f"{base}[{sets}]", base, sets.split(",")))
    try:
        for label, name, extra in runs:
            job, preset, sections, images = E2E[name]
            for model in sections.values():
                if model not in dirs:
                    if tiny:
                        dirs[model] = TINY_MODELS[model]
                    else:
                        dirs[model] = str(work / "models" / model)
                        build_full_size(model, Path(dirs[model]), device)
            n = max(int(images * scale), per_shard) if not tiny else per_shard * 2
            inputs = _linked_copies(work / "e2e-src", work / f"e2e-in-{len(res)}", max(n // per_shard, 1))
            overrides = [f"{sec}.model={dirs[model]}" for sec, model in sections.items()]
            overrides += ["run.progress=none"]
            if tiny:  # the presets' GPU sizes, scaled down to fit two CPU cores
                for sec in sections:
                    overrides += [f"{sec}.device=cpu", f"{sec}.num_gpus=0", f"{sec}.num_cpus=0.25",
                                  f"{sec}.batch_size=8", f"{sec}.dtype=float32"]
                overrides += ["decode.num_cpus=0.25", "decode.batch_size=8", "input.rows_per_block=8"]
            try:
                cfg = load_config(CONFIGS / preset, overrides + extra, job=job)
                with GpuSampler() as gpu:
                    built = importlib.import_module(JOBS[job][0]).build(cfg)  # as `capfilt <job>` builds it
                    summary = run_job(built, [inputs], str(work / f"e2e-out-{len(res)}"), cfg)
                res[label] = {"job": job, "preset": preset, "overrides": extra, "images": summary.rows,
                              "img_s": summary.images_per_s, "steady_img_s": summary.steady_images_per_s,
                              "first_block_s": summary.first_block_s, "gpu_busy_pct": gpu.busy(),
                              "stages": summary.stages}
            except Exception as e:
                log.exception("end to end %s failed", label)
                res[label] = {"job": job, "preset": preset, "overrides": extra, "error": f"{type(e).__name__}: {e}"}
            print(e2e_row(label, res[label]), flush=True)
            save(res)
    finally:
        ray.shutdown()
    return res


def _pct(x: float | None) -> str:
    return f"{x:.0f} %" if x is not None else "n/a"


E2E_HEADER = ("| job (preset) | images | img/s end to end | steady state | first block (s) | GPU busy | busy s per stage |\n"
              "|---|---|---|---|---|---|---|")


def e2e_row(name: str, r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {name} ({r['job']}, {r['preset']}) | failed: {r['error'][:160]} | | | | | |"
    stages = ", ".join(f"{op}: {t['busy_s']:.1f}" for op, t in r["stages"].items())
    steady = f"{r['steady_img_s']:.1f}" if r["steady_img_s"] else "n/a"
    return (f"| {name} ({r['job']}, {r['preset']}) | {r['images']} | {r['img_s']:.1f} | {steady} "
            f"| {r['first_block_s'] or 0:.1f} | {_pct(r['gpu_busy_pct'])} | {stages} |")


def e2e_table(res: dict[str, Any]) -> str:
    return "\n".join([E2E_HEADER, *(e2e_row(name, r) for name, r in res.items())])


# ---------------------------------------------------------------- main


def environment(device: str) -> dict[str, Any]:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import importlib.util

    env = {"date": time.strftime("%Y-%m-%d"), "commit": commit or None, "python": platform.python_version(),
           "torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.machine(), "device": device,
           # what the fast path and the data depend on, where a GPU box may lack it
           "has": {m: importlib.util.find_spec(m) is not None for m in ("simplejpeg", "accelerate", "pynvml", "skimage", "ray")}}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu: the side-by-side CPU suite; cuda: full-size GPU configs")
    p.add_argument("--tiny", action="store_true", help="GPU suite with tiny configs (to test it on a CPU)")
    p.add_argument("--gpu-suite", action="store_true", help="run the GPU suite even with --device cpu")
    p.add_argument("--quick", action="store_true", help="fewer images and seconds (a smoke run)")
    p.add_argument("--seconds", type=float, default=20.0, help="GPU suite: seconds per model")
    p.add_argument("--batch-size", default=None,
                   help="GPU suite, model only: images per batch, comma-separated (default: "
                        + "; ".join(f"{k} {','.join(map(str, v))}" for k, v in GPU_BATCHES.items()) + ")")
    p.add_argument("--compile", action="store_true", help="GPU suite, model only: also CLIP with torch.compile")
    p.add_argument("--no-e2e", action="store_true", help="GPU suite: model-only figures, no end-to-end jobs")
    p.add_argument("--no-model-only", action="store_true", help="GPU suite: end-to-end jobs only")
    p.add_argument("--e2e", default=None,
                   help=f"GPU suite: end-to-end entries, comma-separated (default: all of {','.join(E2E)})")
    p.add_argument("--e2e-variant", action="append", default=[], metavar="NAME:key=value[,key=value]",
                   help="GPU suite: run entry NAME again with these config overrides, side by side (repeatable)")
    p.add_argument("--e2e-scale", type=float, default=1.0, help="GPU suite: × the end-to-end image counts")
    p.add_argument("--only", default=",".join(CPU_PARTS),
                   help=f"CPU suite: the parts to run, comma-separated (default: all of {','.join(CPU_PARTS)})")
    p.add_argument("--out", default="bench-out/bench.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"environment": environment(args.device)}

    def save(part: str | None = None, figures: dict[str, Any] | None = None) -> None:
        """After every figure: a run cut off by a time limit keeps what it measured."""
        if part is not None:
            result[part] = figures
        out.write_text(json.dumps(result, indent=2, default=str))

    if args.device == "cuda" or args.gpu_suite:
        if not args.no_model_only:
            print("| model | img/s (model only) | batch | dtype | GPU busy |\n|---|---|---|---|---|", flush=True)
            batches = tuple(int(b) for b in args.batch_size.split(",")) if args.batch_size else None
            result["gpu"] = gpu_suite(args.device, args.tiny, 2.0 if args.quick else args.seconds, batches, args.compile,
                                      lambda r: save("gpu", r))
        import importlib.util

        if not args.no_e2e and importlib.util.find_spec("ray") is None:
            print("end to end: skipped, Ray is not importable here (on an offline GPU box: `make devicepack`, "
                  "then PYTHONPATH=<unpacked site>; see BENCHMARKS.md)")
        elif not args.no_e2e:
            names = tuple(n.strip() for n in args.e2e.split(",")) if args.e2e else None
            if names and (unknown := sorted(set(names) - set(E2E))):
                p.error(f"--e2e: unknown entr(ies) {', '.join(unknown)}; choose from {', '.join(E2E)}")
            print(E2E_HEADER, flush=True)

            with tempfile.TemporaryDirectory(prefix="capfilt-bench-") as work:
                result["e2e"] = e2e_suite(args.device, args.tiny, args.e2e_scale, Path(work), names,
                                          tuple(args.e2e_variant),
                                          lambda r: save("e2e", r))
    else:
        with tempfile.TemporaryDirectory(prefix="capfilt-bench-") as work:
            parts = tuple(p.strip() for p in args.only.split(",") if p.strip())
            unknown = sorted(set(parts) - set(CPU_PARTS + EXTRA_PARTS))
            if unknown:
                p.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(CPU_PARTS + EXTRA_PARTS)}")
            result["cpu"] = cpu_suite(args.quick, Path(work), parts)
        print(cpu_table(result["cpu"]))
    save()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
