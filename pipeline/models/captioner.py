"""One captioner interface; the family is chosen from the model's own HF config (`model_type`)."""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.config import CaptionConfig
from pipeline.image import Images, Target
from pipeline.models.loading import resolve_model

PIXELS_CAPTION = "pixels_caption"  # the decode target (and batch column) the captioner reads


class Captioner(Protocol):
    model_id: str
    revision: str | None

    def caption(self, pixels: Images) -> list[list[str]]:
        """uint8 HxWx3 images → candidates per image (best first)."""
        ...


def model_type(path: str, cfg: CaptionConfig) -> str:
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    return str(conf.model_type)


FAMILIES = {"blip": "pipeline.models.blip"}


def _family(path: str, cfg: CaptionConfig) -> Any:
    import importlib

    kind = model_type(path, cfg)
    if kind not in FAMILIES:
        raise ValueError(f"caption.model {cfg.model!r}: model_type {kind!r} is not a supported captioner "
                         f"(supported: {', '.join(sorted(FAMILIES))})")
    return importlib.import_module(FAMILIES[kind])


def caption_target(cfg: CaptionConfig, storage_options: dict[str, Any] | None = None) -> Target:
    """The pixel size the captioner's processor wants, read from its config (no weights loaded)."""
    path = resolve_model(cfg.model, storage_options)
    return _family(path, cfg).target(path, cfg, PIXELS_CAPTION)


def load_captioner(cfg: CaptionConfig, storage_options: dict[str, Any] | None = None) -> Captioner:
    path = resolve_model(cfg.model, storage_options)
    return _family(path, cfg).load(path, cfg)  # type: ignore[no-any-return]
