"""The decode target of a model: the size its HF image processor resizes to, read from the processor."""

from __future__ import annotations

from types import SimpleNamespace
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


# An image processor's saved JSON is enough for its decode target when every setting the target reads is
# written in it: a key left out takes its class's default, which only transformers knows. These are the
# keys each class must have written (besides `resample`); any other class, or a file without them, goes
# to transformers (loading.processor_target). Tested against transformers for every family's processor.
_JSON_KEYS: dict[str, tuple[str, ...]] = {
    "BlipImageProcessor": ("size",),
    "ViTImageProcessor": ("size",),
    "CLIPImageProcessor": ("size", "do_center_crop"),
    "Qwen2VLImageProcessor": ("merge_size", "patch_size"),
    "SmolVLMImageProcessor": ("size", "max_image_size"),
    "Idefics3ImageProcessor": ("size", "max_image_size"),
}
_NO_CROP = ("BlipImageProcessor", "ViTImageProcessor", "Qwen2VLImageProcessor", "SmolVLMImageProcessor",
            "Idefics3ImageProcessor")


def json_image_processor(saved: dict[str, Any]) -> Any | None:
    """An image processor's saved settings (its `preprocessor_config.json`, or `processor_config.json`'s
    `image_processor`) as the attributes `processor_size_target` reads, where the JSON alone fixes them
    (the driver then needs neither transformers nor torch); None where only transformers can tell."""
    kind = str(saved.get("image_processor_type", "")).removesuffix("Fast").removesuffix("Pil")
    need = _JSON_KEYS.get(kind)
    if need is None or "resample" not in saved or any(k not in saved for k in need):
        return None
    d = dict(saved)
    if kind == "Qwen2VLImageProcessor":
        pixels = ("min_pixels" in d, "max_pixels" in d)
        if any(pixels):  # the released files' form; the class turns it into `size` (both at once: its precedence)
            if not all(pixels) or "size" in d:
                return None
            d["size"] = {"shortest_edge": d["min_pixels"], "longest_edge": d["max_pixels"]}
        elif "size" not in d:
            return None
    if kind in _NO_CROP and "do_center_crop" in d:  # a setting the class does not have: let transformers say
        return None
    if any(d.get(k) is not None and not isinstance(d[k], dict) for k in ("size", "crop_size", "max_image_size")):
        return None  # an int size (older files): its meaning depends on the class
    if d.get("do_center_crop") and not isinstance(d.get("crop_size"), dict):
        return None
    return SimpleNamespace(**d)
