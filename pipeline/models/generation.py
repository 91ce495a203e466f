"""Generation options of the caption config → `model.generate` keyword arguments."""

from __future__ import annotations

from typing import Any

from pipeline.config import CaptionConfig


def generate_kwargs(cfg: CaptionConfig) -> dict[str, Any]:
    kw: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "min_new_tokens": cfg.min_new_tokens}
    if cfg.cache == "static":
        kw["cache_implementation"] = "static"
    if cfg.strategy == "greedy":
        kw.update(do_sample=False, num_beams=1)
    elif cfg.strategy == "beam":
        kw.update(do_sample=False, num_beams=cfg.num_beams, num_return_sequences=cfg.num_captions)
    else:
        kw.update(do_sample=True, num_beams=1, top_p=cfg.top_p, temperature=cfg.temperature,
                  num_return_sequences=cfg.num_captions, top_k=0)
    return kw
