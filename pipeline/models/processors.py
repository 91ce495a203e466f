"""Processor classes as capfilt loads them (no dependency on the rest of capfilt: the tiny-model builders use it too)."""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def images_only(cls: Any) -> Any:
    """`cls` (a processor class) without its video processor.

    transformers 5 gives Qwen2-VL's and SmolVLM's processors a video processor they need only for videos,
    and video processors need torchvision: without it even loading the processor fails. This subclass
    loads the image processor and tokenizer only; captioning never passes a video. Everything it does
    with images (placeholder expansion, chat template) is the processor's own code."""
    from transformers.processing_utils import ProcessorMixin

    if "video_processor" not in cls.get_attributes():
        return cls

    class ImagesOnly(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def get_attributes(klass) -> list[str]:
            return [a for a in super().get_attributes() if a != "video_processor"]

        # from_pretrained ends in one of these two, depending on the transformers version: ≤ 5.24 passes
        # the loaded attributes positionally, 5.25 puts them in the dict. Either way: video_processor=None.
        @classmethod
        def from_args_and_dict(klass, args: Any, processor_dict: Any, **kwargs: Any) -> Any:
            return super().from_args_and_dict([*args, None], processor_dict, **kwargs)

        @classmethod
        def from_dict(klass, processor_dict: Any, **kwargs: Any) -> Any:
            return super().from_dict({**processor_dict, "video_processor": None}, **kwargs)

        def apply_chat_template(self, conversation: Any, chat_template: Any = None, **kwargs: Any) -> Any:
            # SmolVLM's override reads video defaults (frames, fps) from the video processor first.
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly
