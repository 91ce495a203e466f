"""One captioner interface; the family is chosen from the model's own HF config (`model_type`)."""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.config import CaptionConfig, ConfigError
from pipeline.decode.geometry import Target
from pipeline.models.loading import config_value, processor_target, resolve_model
from pipeline.models.pixels import Images
from pipeline.schema import pixel_column

PIXELS_CAPTION = pixel_column("caption")  # the decode target (and batch column) the captioner reads


class Captioner(Protocol):
    model_id: str
    revision: str | None
    image_processor: Any  # its HF image processor, and the device it runs on: decode.device=cuda needs them
    device: str

    def caption(self, pixels: Images) -> list[list[str]]:
        """uint8 HxWx3 images → candidates per image (best first)."""
        ...


def model_type(path: str, cfg: CaptionConfig) -> str:
    """The model's `model_type`, from its config.json (no transformers on the driver) or AutoConfig."""
    kind = config_value(path, cfg, ("model_type",))
    if isinstance(kind, str):
        return kind
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    return str(conf.model_type)


# The families of models/hf_captioner.py, then the vision-language models of models/vlm.py.
FAMILIES = ("blip", "blip-2", "vision-encoder-decoder", "llava", "florence2", "qwen2_vl", "smolvlm")


def _family(path: str, cfg: CaptionConfig) -> str:
    """The captioner family of a model, from its config; a model or setting it cannot run is a ConfigError."""
    kind = model_type(path, cfg)
    if kind not in FAMILIES:
        raise ConfigError(f"config: caption.model: {cfg.model!r}: model_type {kind!r} is not a supported captioner "
                          f"(supported: {', '.join(FAMILIES)})")
    if cfg.vision_tower and kind != "llava":
        raise ConfigError(f"config: caption.vision_tower: only LLaVA takes another vision tower; {cfg.model} is {kind!r}")
    if cfg.cache == "static" and kind == "blip":
        # transformers sizes the static cache for max_new_tokens, but BLIP's decoder also holds its
        # [DEC] start token: the last step writes past the end (IndexError in index_copy_).
        raise ConfigError(f"config: caption.cache: 'static' is not supported by BLIP ({cfg.model}); use 'dynamic'")
    return kind


def caption_target(cfg: CaptionConfig, storage_options: dict[str, Any] | None = None) -> Target:
    """The pixel size the captioner's processor wants, read from its config (no weights loaded)."""
    path = resolve_model(cfg.model, storage_options)
    _family(path, cfg)
    return processor_target(path, cfg, PIXELS_CAPTION)


def load_captioner(cfg: CaptionConfig, storage_options: dict[str, Any] | None = None) -> Captioner:
    from pipeline.models import hf_captioner, vlm

    path = resolve_model(cfg.model, storage_options)
    family = _family(path, cfg)
    if family in vlm.FAMILIES:
        return vlm.load(family, path, cfg)
    return hf_captioner.load(family, path, cfg)
