"""Safe image decoding: one decode per image to uint8 RGB at the sizes the models need.

Guards: formats outside an allow-list are refused; the pixel count is checked from the header before
any pixel is decoded; truncated files are errors (LOAD_TRUNCATED_IMAGES stays off); EXIF orientation
is applied; every mode (CMYK, L, P, RGBA, 16-bit, ...) is brought to RGB the way a viewer shows it.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.schema import DECODE_ERROR, TOO_LARGE, UNSUPPORTED_FORMAT

ImageFile.LOAD_TRUNCATED_IMAGES = False

# PIL's resampling filter for each resize mode matches what the HF image processors use (BICUBIC for
# BLIP and CLIP), so a processor given our pixels resizes nothing and the outputs stay bit-identical.
_RESAMPLE = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class Target:
    """A size a model needs: `squash` resizes to height×width (BLIP, ViT); `crop` resizes the shortest
    edge to `shortest_edge` then center-crops height×width (CLIP)."""

    name: str
    height: int
    width: int
    mode: Literal["squash", "crop"] = "squash"
    shortest_edge: int = 0
    resample: int = int(_RESAMPLE)


Images = Sequence[np.ndarray] | np.ndarray  # uint8 HxWx3 images: a list, or one (N, H, W, 3) array


class DecodeFailure(Exception):
    """A sample that cannot become pixels; `kind` is the row's status."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


_ORIENTATION_SWAPS = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90°


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode → RGB: 16/32-bit scaled (not saturated), transparency composited on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def resize_to(im: Image.Image, t: Target, resample: int | None = None) -> np.ndarray:
    """Resizes as the HF image processors do (PIL, same filter, same rounding); `resample` overrides
    the filter (the fast path uses BOX: an area average, the right filter for shrinking)."""
    resample = t.resample if resample is None else resample
    if t.mode == "squash":
        out = im.resize((t.width, t.height), resample=resample)
    else:
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        if long > 4 * short:
            # Extreme aspect ratios (1×20000 banners): resizing the short edge up first would make a
            # giant image. Only the centre survives the crop, so cut the centre out first.
            keep = 4 * short
            box = ((w - keep) // 2, 0, (w - keep) // 2 + keep, h) if w > h else (0, (h - keep) // 2, w, (h - keep) // 2 + keep)
            im = im.crop(box)
            w, h = im.size
            short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = t.shortest_edge, int(t.shortest_edge * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        out = im.resize((nw, nh), resample=resample)
        top, left = (nh - t.height) // 2, (nw - t.width) // 2
        out = out.crop((left, top, left + t.width, top + t.height))
    return np.asarray(out, dtype=np.uint8)


# Fault injection for the isolation tests: with CAPFILT_FAILPOINT_DECODE_CRASH=<marker> in the
# environment, an image whose bytes start with <marker> kills the decoding process, as a decoder
# segfault would. Off unless that variable is set.
_CRASH_MARKER = os.environ.get("CAPFILT_FAILPOINT_DECODE_CRASH", "").encode()


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block loses the orientation, not the image
        return 1


def _turbo(data: bytes, im: Image.Image, targets: tuple[Target, ...], orientation: int) -> Image.Image | None:
    """JPEG decoded by libjpeg-turbo straight to the smallest DCT scale (n/8) that still covers every
    target: most of a web JPEG's pixels are never materialised. None when not applicable."""
    try:
        import simplejpeg
    except ImportError:
        return None
    if im.mode not in ("RGB", "L"):  # CMYK/YCCK: PIL knows Adobe's inverted CMYK, libjpeg-turbo does not
        return None
    need = max(max(t.height, t.width, t.shortest_edge) for t in targets)
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=need, min_width=need, strict=True)
    except ValueError as e:  # truncated or corrupt: strict mode says so instead of filling in grey
        raise DecodeFailure(DECODE_ERROR, f"{type(e).__name__}: {e}") from None
    out = Image.fromarray(arr)
    return out.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else out


def inspect(data: bytes, max_pixels: int, formats: tuple[str, ...]) -> tuple[Image.Image, int, int, int]:
    """The header checks of `decode`, without decoding a pixel → (opened image, EXIF orientation,
    width, height as shown); raises DecodeFailure."""
    if not data:
        raise DecodeFailure(DECODE_ERROR, "empty file")
    if _CRASH_MARKER and data.startswith(_CRASH_MARKER):
        os.abort()
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces PIL's bomb warning band (89–179 MP).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data), formats=list(formats))
    except Image.DecompressionBombError as e:
        raise DecodeFailure(TOO_LARGE, str(e)) from None
    except UnidentifiedImageError:
        raise DecodeFailure(UNSUPPORTED_FORMAT, f"not an image, or a format outside {list(formats)}") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for broken headers
        raise DecodeFailure(DECODE_ERROR, f"{type(e).__name__}: {e}") from None
    orientation = _orientation(im)  # read once: the reported size and the fast paths both need it
    width, height = im.size[::-1] if orientation in _ORIENTATION_SWAPS else im.size
    if width * height > max_pixels:
        raise DecodeFailure(TOO_LARGE, f"{width}x{height} exceeds decode.max_pixels={max_pixels}")
    if width < 1 or height < 1:
        raise DecodeFailure(DECODE_ERROR, f"empty image {width}x{height}")
    return im, orientation, width, height


def gpu_decodable(im: Image.Image, data: bytes) -> bool:
    """A JPEG that nvJPEG decodes as a viewer shows it: YCbCr or greyscale (not Adobe CMYK/YCCK), and
    whole: it ends with the EOI marker (nvJPEG may fill a truncated file in silently; the CPU path's
    strict decoder calls it an error)."""
    # The last bytes only (zero padding allowed): stripping the whole file would copy it per image.
    return im.format == "JPEG" and im.mode in ("RGB", "L") and data[-64:].rstrip(b"\x00")[-2:] == b"\xff\xd9"


def decode(
    data: bytes, targets: tuple[Target, ...], max_pixels: int, formats: tuple[str, ...], draft: bool = True,
    fast: bool = False,
) -> tuple[dict[str, np.ndarray], int, int]:
    """Decodes once → ({target name: uint8 HxWx3}, width, height); raises DecodeFailure.

    `fast`: JPEGs through libjpeg-turbo's scaled decoding and an area resize (embeddings within
    cos 0.99 of the processor path, about 3× the speed); otherwise PIL and the processor's own filter,
    bit-identical to the processor path (with `draft`, JPEGs ≥2× the target decode DCT-scaled first)."""
    im, orientation, width, height = inspect(data, max_pixels, formats)
    if fast and im.format == "JPEG" and targets and (turbo := _turbo(data, im, targets, orientation)) is not None:
        return {t.name: resize_to(turbo, t, Image.Resampling.BOX) for t in targets}, width, height
    try:
        if draft and im.format == "JPEG" and targets:
            # DCT-domain downscale: decode at 1/2, 1/4 or 1/8 when the result still covers every target.
            need = max(max(t.height, t.width, t.shortest_edge) for t in targets)
            im.draft("RGB", (need, need))
        im = ImageOps.exif_transpose(im)  # loads the pixels; truncated data raises here
        im.load()
        im = to_rgb(im)
        return {t.name: resize_to(im, t) for t in targets}, width, height
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DecodeFailure(DECODE_ERROR, f"{type(e).__name__}: {e}") from None
    except MemoryError:
        raise DecodeFailure(TOO_LARGE, "out of memory while decoding") from None
