"""Regions of a sample: where a region-aware model should look (Alpha-CLIP's alpha channel, Florence-2's
region prompts, LLaVA with an Alpha-CLIP tower).

A sample has zero or more regions, read from its input as users have them:
- boxes: a field of img2dataset's `KEY.json`, or a Parquet column (`input.regions_field`, default
  `regions`): `[[x0, y0, x1, y1], ...]`, in pixels of the image as it is shown (EXIF orientation
  applied; x right, y down; x1/y1 exclusive), or in [0, 1] of its width/height (`input.region_units:
  normalized`);
- a mask: a tar member `KEY.mask.png` (`input.mask_member`) or a Parquet bytes column (`input.mask_column`,
  default `mask`): an image of the *stored* image's size (before EXIF orientation, as an editor that
  ignores EXIF draws it), non-zero where the region is (grey levels are kept as soft alpha). It is one
  more region, after the boxes.

Each region becomes an alpha map at each model's input size by exactly the image's geometry: the mask
is turned by the image's EXIF orientation, then cut and resized by the same plan (geometry.plan) as the
image; a box is mapped through that plan and covers the pixels whose centres it holds. Both decode paths
use these maps (the GPU path resizes the image on the device by the same plan). A region that cannot
be used (outside the image, empty, a mask of another size, unreadable) makes the row `bad_region`.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image

from pipeline.decode.geometry import Target, plan

Box = tuple[float, float, float, float]
MAX_REGIONS = 64  # per sample: a field with thousands of boxes is an input error, not a workload


class RegionError(ValueError):
    """A region that cannot be used: the row's status becomes `bad_region`, this is its error."""


def parse_boxes(meta: str | None, field: str, units: str, width: int, height: int) -> list[Box]:
    """The boxes of a row's `meta` JSON (`field`), in pixels of the shown image; [] when it has none."""
    if not meta or not field or f'"{field}"' not in meta:  # no JSON parse for rows without regions
        return []
    try:
        value = json.loads(meta).get(field)
    except (ValueError, AttributeError):
        return []
    if value is None:
        return []
    if isinstance(value, str):  # a Parquet string column holding JSON
        try:
            value = json.loads(value)
        except ValueError:
            raise RegionError(f"{field}: not a JSON list of boxes: {value[:80]!r}") from None
    if not isinstance(value, list):
        raise RegionError(f"{field}: expected a list of [x0, y0, x1, y1] boxes, got {type(value).__name__}")
    if len(value) > MAX_REGIONS:
        raise RegionError(f"{field}: {len(value)} boxes, more than {MAX_REGIONS}")
    return [_box(b, i, field, units, width, height) for i, b in enumerate(value)]


def _box(b: Any, i: int, field: str, units: str, width: int, height: int) -> Box:
    where = f"{field}[{i}]"
    if not isinstance(b, list | tuple) or len(b) != 4 or not all(isinstance(v, int | float) for v in b):
        raise RegionError(f"{where}: expected [x0, y0, x1, y1], got {json.dumps(b)[:80]}")
    x0, y0, x1, y1 = (float(v) for v in b)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise RegionError(f"{where}: not finite: {b}")
    if units == "normalized":
        if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
            raise RegionError(f"{where}: {b} is outside [0, 1] (input.region_units: normalized)")
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    if not (x0 < x1 and y0 < y1):
        raise RegionError(f"{where}: {b} is empty (needs x0 < x1 and y0 < y1)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise RegionError(f"{where}: {b} is outside the {width}x{height} image")
    return x0, y0, x1, y1


def read_mask(data: bytes, stored: tuple[int, int], orientation: int, max_pixels: int) -> Image.Image:
    """A mask file → an L image as the sample's image is shown (its EXIF orientation applied)."""
    from pipeline.decode.image import orient

    try:
        im = Image.open(io.BytesIO(data))
        if im.width * im.height > max_pixels:
            raise RegionError(f"mask {im.width}x{im.height} exceeds decode.max_pixels")
        im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RegionError(f"mask: unreadable: {type(e).__name__}: {e}") from None
    if im.size != stored:
        raise RegionError(f"mask: {im.width}x{im.height}, but the image is {stored[0]}x{stored[1]} as stored")
    mask = orient(im.convert("L"), orientation)
    if mask.getbbox() is None:
        raise RegionError("mask: empty (no pixel is set)")
    return mask


def mask_box(mask: Image.Image) -> Box:
    """The box of a mask's set pixels (≥ half), in pixels of the shown image."""
    arr = np.asarray(mask) >= 128
    if not arr.any():
        raise RegionError("mask: no pixel is at least half set")
    ys, xs = np.nonzero(arr)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def box_map(box: Box, width: int, height: int, t: Target) -> np.ndarray:
    """A box in the shown image's pixels → uint8 (H, W) at target `t`: 255 where a pixel's centre is in
    the box after the image's cut and resize (geometry.plan), else 0."""
    p = plan(width, height, t)
    x0, y0, x1, y1 = box
    left, top, pw, ph = 0.0, 0.0, float(width), float(height)
    if p.precrop is not None:
        left, top = p.precrop[0], p.precrop[1]
        pw, ph = p.precrop[2] - p.precrop[0], p.precrop[3] - p.precrop[1]
    sx, sy = p.size[0] / pw, p.size[1] / ph
    cl, ct, cr, cb = p.crop
    xs = np.arange(cl, cr) + 0.5  # pixel centres of the output, in the resized image
    ys = np.arange(ct, cb) + 0.5
    inx = (xs >= (x0 - left) * sx) & (xs < (x1 - left) * sx)
    iny = (ys >= (y0 - top) * sy) & (ys < (y1 - top) * sy)
    return (np.outer(iny, inx) * 255).astype(np.uint8)


def mask_map(mask: Image.Image, t: Target) -> np.ndarray:
    """A shown-orientation mask → uint8 (H, W) at target `t`: the image's own plan, resized bilinearly
    (as Alpha-CLIP resizes its masks)."""
    from pipeline.decode.image import resize_to

    return resize_to(mask, t, Image.Resampling.BILINEAR)


def region_maps(boxes: list[Any], mask: Image.Image | None, width: int, height: int,
                targets: tuple[Target, ...]) -> dict[str, np.ndarray]:
    """Every region (boxes, then the mask) as alpha maps at each target: {target name: (R, H, W) uint8}."""
    out = {}
    for t in targets:
        maps = [box_map(b, width, height, t) for b in boxes]
        if mask is not None:
            maps.append(mask_map(mask, t))
        out[t.name] = np.stack(maps)
    return out


def row_maps(regions: list[list[float]] | None, mask_png: bytes | None, width: int, height: int,
             t: Target) -> np.ndarray:
    """A row's regions as the decode stage left them (`regions`: boxes, the last one the mask's box
    when it has a mask; `mask`: that mask as a PNG in the shown orientation) → (R, H, W) uint8 at `t`."""
    boxes = [tuple(b) for b in (regions or [])]
    mask = Image.open(io.BytesIO(mask_png)) if mask_png is not None else None
    if mask is not None:
        boxes = boxes[:-1]
    maps = region_maps(boxes, mask, width, height, (t,))[t.name] if boxes or mask is not None else None
    return maps if maps is not None else np.zeros((0, *_size(width, height, t)), np.uint8)


def _size(width: int, height: int, t: Target) -> tuple[int, int]:
    p = plan(width, height, t)
    return p.crop[3] - p.crop[1], p.crop[2] - p.crop[0]
