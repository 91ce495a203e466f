"""The geometry both decode paths share: target sizes, the resize/crop plan and the EXIF orientation table.

The CPU path (PIL, `image.py`) and the GPU path (torch, `gpu.py`) apply the same plan with their own
pixel operations, so an image comes out the same shape, cut the same way, on either device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BICUBIC = 3  # PIL's Image.Resampling.BICUBIC: the filter of BLIP's and CLIP's image processors


@dataclass(frozen=True)
class Target:
    """A size a model needs: `squash` resizes to height×width (BLIP, ViT); `crop` resizes the shortest
    edge to `shortest_edge` then center-crops height×width (CLIP). `name` is its pixel column."""

    name: str
    height: int
    width: int
    mode: Literal["squash", "crop"] = "squash"
    shortest_edge: int = 0
    resample: int = BICUBIC  # a PIL resampling filter number


Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class Plan:
    """How a (width, height) image becomes a target: cut `precrop` out (None: nothing), resize to
    `size` (width, height), then cut `crop` out of the resized image."""

    precrop: Box | None
    size: tuple[int, int]
    crop: Box


def plan(width: int, height: int, t: Target) -> Plan:
    """The resize/crop of `t` for an image of width×height, as the HF image processors do it."""
    if t.mode == "squash":
        return Plan(None, (t.width, t.height), (0, 0, t.width, t.height))
    w, h = width, height
    precrop = None
    short, long = min(w, h), max(w, h)
    if long > 4 * short:
        # Extreme aspect ratios (1×20000 banners): resizing the short edge up first would make a
        # giant image. Only the centre survives the crop, so cut the centre out first.
        keep = 4 * short
        a = (long - keep) // 2
        precrop = (a, 0, a + keep, h) if w > h else (0, a, w, a + keep)
        w, h = (keep, h) if w > h else (w, keep)
        short, long = min(w, h), max(w, h)
    new_short, new_long = t.shortest_edge, int(t.shortest_edge * long / short)
    nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
    top, left = (nh - t.height) // 2, (nw - t.width) // 2
    return Plan(precrop, (nw, nh), (left, top, left + t.width, top + t.height))


# EXIF orientation (tag 0x0112) → the transpose that shows the image as a viewer does, named as PIL's
# Image.Transpose members; each device implements these seven operations.
ORIENTATION_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
                         6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
ORIENTATION_SWAPS = {5, 6, 7, 8}  # orientations that turn the image by 90°: width and height swap
