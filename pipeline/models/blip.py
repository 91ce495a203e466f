"""BLIP captioning (`BlipForConditionalGeneration` with its own processor)."""

from __future__ import annotations

from typing import Any

from pipeline.config import CaptionConfig, ModelConfig
from pipeline.image import Images, Target
from pipeline.models.generation import generate_kwargs
from pipeline.models.loading import pretrained_kwargs, processor_target, setup_torch


def target(path: str, cfg: ModelConfig, name: str) -> Target:
    return processor_target(path, cfg, name)


class BlipCaptioner:
    """Batched BLIP captioning; `caption()` takes uint8 pixels already at the processor's size."""

    def __init__(self, model: Any, processor: Any, cfg: CaptionConfig, device: str, dtype: Any):
        self.model, self.processor, self.cfg = model, processor, cfg
        self.device, self.dtype = device, dtype
        self.model_id = cfg.model
        self.revision = getattr(model.config, "_commit_hash", None) or cfg.revision
        self.gen_kwargs = generate_kwargs(cfg)

    def caption(self, pixels: Images) -> list[list[str]]:
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
    from transformers import AutoProcessor, BlipForConditionalGeneration

    device, dtype = setup_torch(cfg)
    common = pretrained_kwargs(cfg)
    processor = AutoProcessor.from_pretrained(path, **common)
    model = BlipForConditionalGeneration.from_pretrained(
        path, dtype=dtype, device_map=device if device != "cpu" else None, **common
    ).eval()
    return BlipCaptioner(model, processor, cfg, device, dtype)
