"""Is a model stage fed at its own speed? The real pipeline with a simulated device (`--only feed`).

The real jobs run end to end (read, decode, the model stage's pixel staging, its processor and tensor
conversion, batching, token decoding, flags, the write), with only the model's math replaced by a wait of
a fixed time per image that holds no CPU and no GIL (`time.sleep`), as a GPU kernel does. Each simulated
call logs when it ran, so the device's busy fraction in the steady window can be measured beside the run's
img/s. The machine's decode capacity is measured in the same run: capfilt's decode of the same JPEGs, in
this process, × the cores the run gives decode. Two device rates: 0.6× that capacity (the device is the
bottleneck: it should be busy all the time) and 3× (decode is: the pipeline should run near its capacity).

Two stage shapes: BLIP-shaped (CaptionImages, beam generate, batch 256) and CLIP-shaped (EmbedImages,
image features, batch 256). Not part of the product: bench/ only.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

RAY_CPUS = 2  # the Ray the bench starts; the model actor takes MODEL_CPUS of them, decode the rest
MODEL_CPUS = 0.5


class SimulatedDevice:
    """A model whose math is a wait of `per_image_s` per image (no CPU, no GIL held), logging each call's
    (start, end, images) to `log`; every other attribute is the real model's."""

    def __init__(self, real: Any, per_image_s: float, log: str, tokens: Any = None, dim: int = 0):
        self._real, self._per_image_s, self._log, self._tokens, self._dim = real, per_image_s, log, tokens, dim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _busy(self, n: int) -> None:
        start = time.time()
        time.sleep(n * self._per_image_s)
        with open(self._log, "a") as f:  # one short append per call: whole lines from every actor
            f.write(f"{start:.6f} {time.time():.6f} {n}\n")

    def generate(self, pixel_values: Any = None, **kwargs: Any) -> Any:
        n = int(pixel_values.shape[0])
        self._busy(n)
        return self._tokens.repeat(n * int(kwargs.get("num_return_sequences") or 1), 1)

    def get_image_features(self, pixel_values: Any = None, **kwargs: Any) -> Any:
        import torch

        n = int(pixel_values.shape[0])
        self._busy(n)
        return SimpleNamespace(pooler_output=torch.ones((n, self._dim)))


def load_simulated_captioner(cfg: Any, storage_options: dict[str, Any] | None = None, *, per_image_s: float,
                             log: str) -> Any:
    """The real captioner (processor, tokenizer, generation settings), its model's generate simulated: it
    returns a fixed caption's token ids, which the real post-processing decodes and flags."""
    import torch

    from pipeline.models.captioner import load_captioner

    cap = load_captioner(cfg, storage_options)
    tok = getattr(cap, "tokenizer", None) or cap.processor.tokenizer
    ids = tok("a photograph of a dog running on the grass in the park", add_special_tokens=False)["input_ids"]
    start = cap.model.config.decoder_start_token_id if hasattr(cap.model.config, "decoder_start_token_id") else None
    tokens = torch.tensor([[start or tok.cls_token_id or 0, *ids, tok.sep_token_id or 0]])
    cap.model = SimulatedDevice(cap.model, per_image_s, log, tokens=tokens)
    return cap


def load_simulated_clip(cfg: Any, storage_options: dict[str, Any] | None = None, *, per_image_s: float, log: str) -> Any:
    """The real CLIP embedder (processor, pixel values on the device, normalisation), its image tower
    simulated."""
    from pipeline.models.clip import load_clip

    emb = load_clip(cfg, storage_options)
    emb.model = SimulatedDevice(emb.model, per_image_s, log, dim=emb.dim)
    return emb


def busy_fraction(log: str) -> dict[str, float]:
    """The device's busy fraction over the steady window, from the second call's start to the last one's
    start (the first waits for the pipeline to fill; the last is a short remainder), all actors' calls; and
    the images it got per second there (the stage's steady rate: decode's, where decode is the bottleneck)."""
    calls = sorted(tuple(map(float, line.split())) for line in Path(log).read_text().splitlines() if line.strip())
    if len(calls) < 3:
        return {"busy": float("nan"), "window_s": 0.0, "calls": len(calls), "window_images": 0, "window_img_s": 0.0}
    t0, t1 = calls[1][0], calls[-1][0]
    busy = sum(min(end, t1) - max(start, t0) for start, end, _ in calls if end > t0 and start < t1)
    images = sum(n for _, _, n in calls[1:-1])
    return {"busy": busy / (t1 - t0), "window_s": t1 - t0, "calls": len(calls), "window_images": images,
            "window_img_s": images / (t1 - t0)}


def decode_capacity(datas: list[bytes], spec: Any, seconds: float) -> float:
    """capfilt's own decode as the job's decode stage (`spec`) calls it (bench/stage.py), in this process,
    one core: img/s."""
    from bench.meters import rate
    from bench.stage import decode_as_the_stage

    def run() -> int:
        decode_as_the_stage(datas, spec)
        return len(datas)

    return rate(run, seconds)[0]


def shaped_job(shape: str, per_image_s: float, log: str, overlap: bool = True) -> tuple[Any, Any]:
    """(job, config) of a stage shape, its model stage loading the simulated device."""
    from dataclasses import replace

    from jobs.caption import JOB as CAPTION
    from jobs.embed import JOB as EMBED
    from pipeline.config import load_config
    from pipeline.job import build_job
    from tests.fixtures.paths import CONFIGS

    common = [f"decode.num_cpus={(RAY_CPUS - MODEL_CPUS) / 3:.4f}", "input.rows_per_block=64", "run.progress=none",
              "run.keep_warm_s=0"]
    if shape == "blip":
        spec, config = CAPTION, "tiny.yaml"
        over = ["caption.strategy=beam", "caption.num_beams=3", "caption.batch_size=256", f"caption.num_cpus={MODEL_CPUS}",
                "caption.num_threads=1", f"caption.overlap={str(overlap).lower()}"]
        load = functools.partial(load_simulated_captioner, per_image_s=per_image_s, log=log)
    else:
        spec, config = EMBED, "tiny-embed.yaml"
        over = ["clip.batch_size=256", f"clip.num_cpus={MODEL_CPUS}", "clip.num_threads=1", "embed.text=false",
                f"clip.overlap={str(overlap).lower()}"]
        load = functools.partial(load_simulated_clip, per_image_s=per_image_s, log=log)
    cfg = load_config(str(CONFIGS / config), [*over, *common], defaults=spec.defaults)
    job = build_job(spec, cfg)
    return replace(job, stages=[replace(s, kwargs={**s.kwargs, "load": load}) if s.actor else s for s in job.stages]), cfg


def run_shape(shape: str, shards: str, work: Path, per_image_s: float, overlap: bool = True) -> dict[str, Any]:
    from pipeline.runner.run import run_job

    name = f"{shape}-{per_image_s:.6f}-{'overlap' if overlap else 'serial'}"
    log = str(work / f"device-{name}.log")
    if os.path.exists(log):
        os.remove(log)
    job, cfg = shaped_job(shape, per_image_s, log, overlap)
    summary = run_job(job, [shards], str(work / f"out-feed-{name}"), cfg)
    timing = summary.extra.get("timing", {})
    return {"rows": summary.rows, "img_s": summary.images_per_s, "steady_img_s": summary.steady_images_per_s,
            "after_first_block_img_s": timing.get("after_first_block_img_s"), **busy_fraction(log)}


def bench_feed(work: Path, images: int, seconds: float) -> dict[str, Any]:
    """Both stage shapes at 0.6× and 3× the decode capacity (see the module's docstring)."""
    from bench.data import linked_copies, web_jpegs, write_shards
    from pipeline.config import load_config
    from pipeline.runner import ray_start

    pool = web_jpegs(min(images, 240), seed=5)  # distinct web JPEGs, cycled: the same decode work
    shards = write_shards((pool[i % len(pool)] for i in range(images)), work / "feed-in", 64)
    # Decode-bound, 10× the images (the same shards linked again): decode runs ahead while the model loads,
    # and that head start must be a small part of the run for the device's steady window to see decode's pace
    many = linked_copies(work / "feed-in", work / "feed-in-10x", 10) if images >= 1000 else shards
    out: dict[str, Any] = {"images": images, "images_decode_bound": 10 * images if images >= 1000 else images,
                           "ray_cpus": RAY_CPUS, "decode_cores": RAY_CPUS - MODEL_CPUS}
    ray_cfg = load_config(None, [f"run.num_cpus={RAY_CPUS}"])
    ray_start.init_ray(ray_cfg)
    try:
        for shape in ("blip", "clip"):
            decode = shaped_job(shape, 1.0, os.devnull)[0].stages[0]  # the job's decode stage
            targets = decode.args[1]
            per_core = decode_capacity(pool[:64], decode, seconds)
            capacity = per_core * (RAY_CPUS - MODEL_CPUS)
            out[shape] = {"decode_img_s_per_core": per_core, "decode_capacity_img_s": capacity,
                          "targets": [f"{t.name} {t.height}x{t.width}" for t in targets]}
            # model-bound also one batch at a time in the actor (overlap off): what the overlap gives
            for label, factor, overlap in (("model_bound", 0.6, True), ("decode_bound", 3.0, True),
                                           ("model_bound_serial", 0.6, False)):
                r = run_shape(shape, many if factor > 1 else shards, work, 1.0 / (factor * capacity), overlap)
                r["device_img_s"] = factor * capacity
                r["vs_capacity"] = r["window_img_s"] / capacity  # the images the device got per second, steady
                out[shape][label] = r
    finally:
        ray_start.shutdown(ray_cfg)
    return out
