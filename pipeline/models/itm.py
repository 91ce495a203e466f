"""BLIP image-text matching (`BlipForImageTextRetrieval`): ITM probability and ITC cosine per pair.

The vision tower runs once per image, and so do the text encoder's cross-attention keys and values
(blip_attention.py); each image's texts (alt-text and every candidate) are then scored against them, the
same computation as the model's own forward for each pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.config import ItmConfig
from pipeline.models import blip_attention, turns
from pipeline.models.loading import load_pretrained, pretrained_kwargs, resolve_model, setup_torch
from pipeline.models.pixels import Images, model_pixel_values


class BlipItm:
    def __init__(self, model: Any, processor: Any, cfg: ItmConfig, device: str, dtype: Any):
        self.model, self.processor, self.cfg, self.device, self.dtype = model, processor, cfg, device, dtype
        self.model_id = cfg.model
        self.shared = blip_attention.install(model)  # SDPA vision tower, image K/V once per image

    @property
    def image_processor(self) -> Any:
        return self.processor.image_processor

    def score(self, pixels: Images, texts: Sequence[Sequence[str]]) -> tuple[list[list[float]], list[list[float]]]:
        """→ (ITM match probability, ITC cosine), one list per image with one value per text."""
        import torch
        from torch.nn.functional import normalize

        pairs = [(i, t) for i, ts in enumerate(texts) for t in ts]
        if not pairs:
            return [[] for _ in texts], [[] for _ in texts]
        m = self.model
        with turns.TOKENIZER:
            tok = self.processor.tokenizer([t for _, t in pairs], padding="longest", truncation=True,
                                           max_length=self.cfg.max_text_tokens, return_tensors="pt")
        tok = tok.to(self.device)
        pv = model_pixel_values(self.processor.image_processor, pixels, self.device, self.dtype)
        with turns.DEVICE, torch.inference_mode():
            image_embeds = m.vision_model(pixel_values=pv).last_hidden_state
            idx = torch.tensor([i for i, _ in pairs], device=self.device)
            with self.shared.session(len(image_embeds), rows=idx):  # image K/V once per image, not per text
                q = m.text_encoder(input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                                   encoder_hidden_states=image_embeds).last_hidden_state
            itm = torch.softmax(m.itm_head(q[:, 0, :]).float(), dim=-1)[:, 1]
            t = m.text_encoder(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
            image_feat = normalize(m.vision_proj(image_embeds[:, 0, :]).float(), dim=-1)[idx]
            text_feat = normalize(m.text_proj(t[:, 0, :]).float(), dim=-1)
            itc = (image_feat * text_feat).sum(-1)
        return _split(itm.cpu().numpy(), texts), _split(itc.cpu().numpy(), texts)


def _split(values: np.ndarray, texts: Sequence[Sequence[str]]) -> list[list[float]]:
    out, j = [], 0
    for ts in texts:
        out.append([float(v) for v in values[j : j + len(ts)]])
        j += len(ts)
    return out


def load_itm(cfg: ItmConfig, storage_options: dict[str, Any] | None = None) -> BlipItm:
    from transformers import AutoProcessor, BlipForImageTextRetrieval

    path = resolve_model(cfg.model, storage_options)
    device, dtype = setup_torch(cfg)
    processor = AutoProcessor.from_pretrained(path, **pretrained_kwargs(cfg))
    model = load_pretrained(BlipForImageTextRetrieval, path, cfg, device, dtype)
    return BlipItm(model, processor, cfg, device, dtype)
