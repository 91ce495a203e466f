"""The decode target of a model: the size its HF image processor resizes to, read from the processor."""

from __future__ import annotations

from typing import Any

from pipeline.decode.geometry import BICUBIC, Target


def _as_dict(size: Any) -> dict[str, Any]:
    # transformers 5 processors hold sizes as a SizeDict object; older ones, and saved configs, as a dict.
    if size is None:
        return {}
    return size if isinstance(size, dict) else dict(size.__dict__)


def processor_size_target(image_processor: Any, name: str) -> Target:
    """The decode target of a loaded HF image processor, so that its own resize is a no-op and the
    pixels match the processor path exactly: `squash` to its height×width, or (with a center crop)
    its shortest edge then the crop; for the aspect-keeping processors of Qwen2-VL (`pixels`: its
    `size` holds min/max pixels) and Idefics3/SmolVLM (`longest`), each image's own first resize.
    Raises ValueError for a processor that has none of these."""
    size = _as_dict(image_processor.size)
    resample = int(getattr(image_processor, "resample", BICUBIC) or BICUBIC)
    merge = getattr(image_processor, "merge_size", None)
    if merge and size.get("shortest_edge") and size.get("longest_edge"):  # Qwen2-VL: areas, not edges
        return Target(name, 0, 0, "pixels", resample=resample, factor=int(image_processor.patch_size) * int(merge),
                      min_pixels=int(size["shortest_edge"]), max_pixels=int(size["longest_edge"]))
    if size.get("longest_edge") and not size.get("shortest_edge") and hasattr(image_processor, "max_image_size"):
        return Target(name, 0, 0, "longest", resample=resample, longest_edge=int(size["longest_edge"]))
    if size.get("height") and size.get("width") and not getattr(image_processor, "do_center_crop", False):
        return Target(name, int(size["height"]), int(size["width"]), "squash", resample=resample)
    crop = _as_dict(getattr(image_processor, "crop_size", None))
    if not (crop.get("height") and crop.get("width") and size.get("shortest_edge")):
        raise ValueError(f"{type(image_processor).__name__}: size {size} and crop {crop}: neither a fixed size nor "
                         "a shortest edge with a center crop")
    return Target(name, int(crop["height"]), int(crop["width"]), "crop", shortest_edge=int(size["shortest_edge"]),
                  resample=resample)
