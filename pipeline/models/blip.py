"""BLIP captioning (`BlipForConditionalGeneration` with its own processor)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.config import CaptionConfig
from pipeline.image import Target
from pipeline.models.generation import generate_kwargs
from pipeline.models.loading import resolve_device, resolve_dtype


def processor_target(image_processor: Any, name: str) -> Target:
    """The size an HF image processor resizes to, as a decode target (so its own resize is a no-op)."""
    size = image_processor.size
    size = size if isinstance(size, dict) else size.__dict__
    resample = int(getattr(image_processor, "resample", 3) or 3)
    if size.get("height") and size.get("width") and not getattr(image_processor, "do_center_crop", False):
        return Target(name, int(size["height"]), int(size["width"]), "squash", resample=resample)
    crop = image_processor.crop_size
    crop = crop if isinstance(crop, dict) else crop.__dict__
    return Target(name, int(crop["height"]), int(crop["width"]), "crop",
                  shortest_edge=int(size["shortest_edge"]), resample=resample)


def target(path: str, cfg: CaptionConfig, name: str) -> Target:
    from transformers import AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    return processor_target(ip, name)


class BlipCaptioner:
    """Batched BLIP captioning; `caption()` takes uint8 pixels already at the processor's size."""

    def __init__(self, model: Any, processor: Any, cfg: CaptionConfig, device: str, dtype: Any):
        self.model, self.processor, self.cfg = model, processor, cfg
        self.device, self.dtype = device, dtype
        self.model_id = cfg.model
        self.revision = getattr(model.config, "_commit_hash", None) or cfg.revision
        self.gen_kwargs = generate_kwargs(cfg)

    def caption(self, pixels: Sequence[np.ndarray]) -> list[list[str]]:
        import torch

        images = list(pixels)
        text = [self.cfg.prompt] * len(images) if self.cfg.prompt else None
        inputs = self.processor(images=images, text=text, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        if self.cfg.strategy == "sample":
            torch.manual_seed(self.cfg.seed)  # same batch, same seed → same candidates
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.gen_kwargs)
        texts = [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]
        n = len(texts) // len(images)
        return [texts[i * n : (i + 1) * n] for i in range(len(images))]


def load(path: str, cfg: CaptionConfig) -> BlipCaptioner:
    import torch
    from transformers import AutoProcessor, BlipForConditionalGeneration

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    processor = AutoProcessor.from_pretrained(path, **common)
    model = BlipForConditionalGeneration.from_pretrained(
        path, dtype=dtype, device_map=device if device != "cpu" else None, **common
    ).eval()
    if device == "cpu":  # match torch's threads to the CPUs Ray reserved for this actor
        torch.set_num_threads(cfg.num_threads or max(1, math.ceil(cfg.num_cpus)))
    return BlipCaptioner(model, processor, cfg, device, dtype)
