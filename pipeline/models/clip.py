"""CLIP (`CLIPModel`, any size): L2-normalised image and text embeddings, and their cosine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.config import ClipConfig
from pipeline.models import turns
from pipeline.models.loading import config_value, load_pretrained, pretrained_kwargs, resolve_model, setup_torch
from pipeline.models.pixels import Images, model_pixel_values


class ClipEmbedder:
    def __init__(self, model: Any, image_processor: Any, tokenizer: Any, cfg: ClipConfig, device: str, dtype: Any):
        self.model, self.image_processor, self.tokenizer = model, image_processor, tokenizer
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.model_id = cfg.model
        self.max_length = int(model.config.text_config.max_position_embeddings)
        # Alpha-CLIP (capfilt convert alpha-clip): a 4th input channel says where to look; the whole image
        # is an all-ones mask (models/alpha_clip.py)
        self.alpha = int(getattr(model.config.vision_config, "num_channels", 3)) == 4

    def image_features(self, pixels: Images) -> Any:
        """uint8 images at the processor's size → (n, d) float32 tensor on the device, L2-normalised.
        Not waited for: the caller can tokenise texts while the GPU runs the image tower."""
        import torch
        from torch.nn.functional import normalize

        if len(pixels) == 0:
            return torch.zeros((0, self.dim), device=self.device)
        pv = model_pixel_values(self.image_processor, pixels, self.device, self.dtype)
        if self.alpha:
            from pipeline.models.alpha_clip import with_alpha

            pv = with_alpha(pv)
        with turns.DEVICE, torch.inference_mode():
            out = self.model.get_image_features(pixel_values=pv).pooler_output
            return normalize(out.float(), dim=-1)

    def region_features(self, pixels: Images, masks: np.ndarray) -> Any:
        """Alpha-CLIP: uint8 images with a uint8 (n, H, W) alpha map each (where to look: 255 inside) →
        (n, d) float32 tensor on the device, L2-normalised."""
        import torch
        from torch.nn.functional import normalize

        from pipeline.models.alpha_clip import with_alpha

        if len(pixels) == 0:
            return torch.zeros((0, self.dim), device=self.device)
        pv = model_pixel_values(self.image_processor, pixels, self.device, self.dtype)
        alpha = torch.from_numpy(np.ascontiguousarray(masks)).to(self.device, torch.float32) / 255.0
        with turns.DEVICE, torch.inference_mode():
            out = self.model.get_image_features(pixel_values=with_alpha(pv, alpha.to(pv.dtype))).pooler_output
            return normalize(out.float(), dim=-1)

    def text_features(self, texts: Sequence[str]) -> Any:
        """texts → (n, d) float32 tensor on the device, L2-normalised (truncated to the model's 77 tokens)."""
        import torch
        from torch.nn.functional import normalize

        if len(texts) == 0:
            return torch.zeros((0, self.dim), device=self.device)
        with turns.TOKENIZER:
            tok = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        tok = tok.to(self.device)
        with turns.DEVICE, torch.inference_mode():
            out = self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
            return normalize(out.float(), dim=-1)

    def embed_images(self, pixels: Images) -> np.ndarray:
        """`image_features` as (n, d) float32 NumPy."""
        return self.image_features(pixels).cpu().numpy()  # type: ignore[no-any-return]

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """`text_features` as (n, d) float32 NumPy."""
        return self.text_features(texts).cpu().numpy()  # type: ignore[no-any-return]

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)


def load_clip(cfg: ClipConfig, storage_options: dict[str, Any] | None = None) -> ClipEmbedder:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    path = resolve_model(cfg.model, storage_options)
    device, dtype = setup_torch(cfg)
    kw = pretrained_kwargs(cfg)
    model = load_pretrained(CLIPModel, path, cfg, device, dtype)
    return ClipEmbedder(model, AutoImageProcessor.from_pretrained(path, **kw), AutoTokenizer.from_pretrained(path, **kw),
                        cfg, device, dtype)


def clip_dim(cfg: ClipConfig, storage_options: dict[str, Any] | None = None) -> int:
    dim = config_value(resolve_model(cfg.model, storage_options), cfg, ("projection_dim",))
    return int(dim) if isinstance(dim, int) else int(_config(cfg, storage_options).projection_dim)


def is_alpha_clip(cfg: ClipConfig, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether the CLIP model takes an alpha channel (a converted Alpha-CLIP): then it scores and embeds regions."""
    path = resolve_model(cfg.model, storage_options)
    if isinstance(config_value(path, cfg, ("vision_config",)), dict):  # config.json read as JSON: no transformers
        return config_value(path, cfg, ("vision_config", "num_channels")) == 4  # unwritten: the class's 3
    return int(getattr(_config(cfg, storage_options).vision_config, "num_channels", 3)) == 4


def _config(cfg: ClipConfig, storage_options: dict[str, Any] | None) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model(cfg.model, storage_options), **pretrained_kwargs(cfg))
