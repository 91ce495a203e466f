"""The geometry both decode paths share: target sizes, the resize/crop plan and the EXIF orientation table.

The CPU path (PIL, `image.py`) and the GPU path (torch, `gpu.py`) apply the same plan with their own
pixel operations, so an image comes out the same shape, cut the same way, on either device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

BICUBIC = 3  # PIL's Image.Resampling.BICUBIC: the filter of BLIP's and CLIP's image processors


@dataclass(frozen=True)
class Target:
    """A size a model needs: `squash` resizes to height×width (BLIP, ViT, Florence-2); `crop` resizes the
    shortest edge to `shortest_edge` then center-crops height×width (CLIP, LLaVA). Two keep the image's
    aspect ratio, so each image gets its own size (`dynamic`): `pixels` rounds each side to a multiple of
    `factor` within [min_pixels, max_pixels] pixels (Qwen2-VL's smart_resize), `longest` scales the longest
    edge to `longest_edge` (Idefics3/SmolVLM). `name` is its pixel column."""

    name: str
    height: int
    width: int
    mode: Literal["squash", "crop", "pixels", "longest"] = "squash"
    shortest_edge: int = 0
    resample: int = BICUBIC  # a PIL resampling filter number
    longest_edge: int = 0
    factor: int = 0
    min_pixels: int = 0
    max_pixels: int = 0

    @property
    def dynamic(self) -> bool:
        return self.mode in ("pixels", "longest")


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
    if t.dynamic:
        if t.mode == "pixels":
            h, w = smart_resize(height, width, t.factor, t.min_pixels, t.max_pixels)
        else:
            h, w = longest_edge_size(height, width, t.longest_edge)
        return Plan(None, (w, h), (0, 0, w, h))
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


# The two size rules below are transformers' own (qwen2_vl `smart_resize`; smolvlm/idefics3
# `_resize_output_size_rescale_to_max_len` then `_resize_output_size_scale_below_upper_bound`), written
# again here because the decode workers never import transformers (a second or more per process).
# tests/unit/decode/test_geometry.py holds them equal to transformers' on thousands of sizes.


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width): each a multiple of `factor`, the area within [min_pixels, max_pixels], the aspect
    ratio kept as closely as that allows. Raises ValueError beyond 200:1, as Qwen2-VL's processor does."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


MAX_IMAGE_SIZE = 4096  # Idefics3/SmolVLM's absolute bound on a side


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) with the longest edge scaled to `longest` (the other made even), then both
    below MAX_IMAGE_SIZE."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    aspect = width / height
    if width >= height and width > MAX_IMAGE_SIZE:
        width, height = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE / aspect)
    elif height > width and height > MAX_IMAGE_SIZE:
        height, width = MAX_IMAGE_SIZE, int(MAX_IMAGE_SIZE * aspect)
    return max(height, 1), max(width, 1)


def draft_need(targets: tuple[Target, ...], width: int, height: int) -> int:
    """The side a JPEG's DCT-scaled decode must still cover for every target of a width×height image."""
    return max(max(plan(width, height, t).size) if t.dynamic else max(t.height, t.width, t.shortest_edge)
               for t in targets)


# EXIF orientation (tag 0x0112) → the transpose that shows the image as a viewer does, named as PIL's
# Image.Transpose members; each device implements these seven operations.
ORIENTATION_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
                         6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}
ORIENTATION_SWAPS = {5, 6, 7, 8}  # orientations that turn the image by 90°: width and height swap
