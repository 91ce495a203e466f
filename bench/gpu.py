"""The GPU suite: full-size models (random weights) alone, batch sweeps, and the real jobs end to end."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.data import linked_copies, web_jpegs, write_shards
from bench.meters import GpuSampler, rate
from bench.report import e2e_row, gpu_row
from pipeline.models.random_weights import build_full_size, build_model, model_configs

log = logging.getLogger("capfilt.bench")


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
    for name, (kind, config) in model_configs(tiny).items():
        runs = [(b, "") for b in (batches or GPU_BATCHES[kind])]
        widest = max(b for b, _ in runs)
        if kind == "blip":
            runs.append((widest, "stock"))
        if compile and kind == "clip":
            runs.append((widest, "compile"))  # last: compiling replaces the model's tower
        model = build_model(kind, config, device)  # once per model, every batch size on it
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
    # The vision-language captioners at their real sizes (VLM_SIZES["full"]) with their presets; random
    # weights rarely stop early, so every caption runs to max_new_tokens: a floor on the real rate.
    "smolvlm": ("caption", "smolvlm.yaml", {"caption": "smolvlm"}, 1_000),
    "florence2": ("caption", "florence2.yaml", {"caption": "florence2"}, 1_000),
    "qwen2-vl": ("caption", "qwen2-vl.yaml", {"caption": "qwen2-vl"}, 1_000),
    "llava": ("caption", "llava.yaml", {"caption": "llava"}, 500),
}
VLM_ENTRIES = ("smolvlm", "florence2", "qwen2-vl", "llava")
DEFAULT_E2E = tuple(n for n in E2E if n not in VLM_ENTRIES)  # the VLMs run when named: `--e2e smolvlm,...`

TINY_MODELS = {"blip-base": "tiny:blip", "blip-large": "tiny:blip", "itm-large": "tiny:blip-itm",
               "clip-b32": "tiny:clip", "clip-l14": "tiny:clip", **{n: f"tiny:{n}" for n in VLM_ENTRIES}}

def e2e_suite(device: str, tiny: bool, scale: float, work: Path, names: tuple[str, ...] | None = None,
              variants: tuple[str, ...] = (), save: Callable[[dict[str, Any]], None] = lambda r: None) -> dict[str, Any]:
    """Each entry of E2E as `capfilt <job>` runs it: img/s end to end and in steady state, GPU busy
    (NVML) during the run, and the time in each Ray Data operator (decode, each model).

    `names` picks entries (default: DEFAULT_E2E), in that order; each of `variants`
    ("NAME:key=value[,key=value]") runs entry NAME again with those overrides, named
    "NAME[key=value,...]", beside it in the same run: an A/B of one switch. A
    run that fails is recorded with its error and the next one runs; `save` gets the results so far
    after each run (a run cut off at the box's time limit keeps what it measured)."""
    from pipeline.cli import job_specs
    from pipeline.config import load_config
    from pipeline.job import build_job
    from pipeline.runner import ray_start
    from pipeline.runner.run import run_job

    dirs: dict[str, str] = {}
    pool = web_jpegs(64 if tiny else 256, seed=4)
    per_shard = 16 if tiny else 500
    write_shards((pool[i % len(pool)] for i in range(per_shard)), work / "e2e-src", per_shard)
    res: dict[str, Any] = {}
    ray_cfg = load_config(None, [f"run.num_cpus={os.cpu_count()}"])
    ray_start.init_ray(ray_cfg)  # as the jobs start it
    specs = job_specs()
    runs: list[tuple[str, str, list[str]]] = [(n, n, []) for n in (names or DEFAULT_E2E)]
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
            inputs = linked_copies(work / "e2e-src", work / f"e2e-in-{len(res)}", max(n // per_shard, 1))
            overrides = [f"{sec}.model={dirs[model]}" for sec, model in sections.items()]
            overrides += ["run.progress=none"]
            if tiny:  # the presets' GPU sizes, scaled down to fit two CPU cores
                for sec in sections:
                    overrides += [f"{sec}.device=cpu", f"{sec}.num_gpus=0", f"{sec}.num_cpus=0.25",
                                  f"{sec}.batch_size=8", f"{sec}.dtype=float32"]
                overrides += ["decode.num_cpus=0.25", "decode.batch_size=8", "input.rows_per_block=8"]
            try:
                cfg = load_config(CONFIGS / preset, overrides + extra, defaults=specs[job].defaults)
                with GpuSampler() as gpu:
                    built = build_job(specs[job], cfg)  # as `capfilt <job>` builds it
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
        ray_start.shutdown(ray_cfg)
    return res
