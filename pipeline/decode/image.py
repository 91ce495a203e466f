"""Safe image decoding: one decode per image to uint8 RGB at the sizes the models need.

Guards: formats outside an allow-list are refused; the pixel count is checked from the header before
any pixel is decoded; truncated files are errors (LOAD_TRUNCATED_IMAGES stays off); EXIF orientation
is applied; every mode (CMYK, L, P, RGBA, 16-bit, ...) is brought to RGB the way a viewer shows it.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline.config import DecodeConfig
from pipeline.decode.geometry import ORIENTATION_SWAPS, ORIENTATION_TRANSPOSE, Target, draft_need, plan
from pipeline.schema import DECODE_ERROR, OK, TOO_LARGE, UNSUPPORTED_FORMAT

ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeFailure(Exception):
    """A sample that cannot become pixels; `kind` is the row's status."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


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
    """Resizes as the HF image processors do (PIL, same filter, same rounding; geometry.plan); `resample`
    overrides the filter (the fast path uses BOX: an area average, the right filter for shrinking)."""
    p = plan(im.width, im.height, t)
    if p.precrop is not None:
        im = im.crop(p.precrop)
    out = im.resize(p.size, resample=t.resample if resample is None else resample)
    if p.crop != (0, 0, *p.size):
        out = out.crop(p.crop)
    return np.asarray(out, dtype=np.uint8)


# Fault injection for the isolation and stall tests: with CAPFILT_FAILPOINT_DECODE_CRASH=<marker> in
# the environment, an image whose bytes start with <marker> kills the decoding process, as a decoder
# segfault would; with CAPFILT_FAILPOINT_DECODE_HANG=<marker>, it hangs the decoder forever. Off unless
# those variables are set.
_CRASH_MARKER = os.environ.get("CAPFILT_FAILPOINT_DECODE_CRASH", "").encode()
_HANG_MARKER = os.environ.get("CAPFILT_FAILPOINT_DECODE_HANG", "").encode()


def orient(im: Image.Image, orientation: int) -> Image.Image:
    """The image as a viewer shows it, for EXIF orientation 1–8 (geometry.ORIENTATION_TRANSPOSE)."""
    name = ORIENTATION_TRANSPOSE.get(orientation)
    return im.transpose(Image.Transpose[name]) if name else im


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # a malformed EXIF block loses the orientation, not the image
        return 1


def _turbo(data: bytes, im: Image.Image, targets: tuple[Target, ...], orientation: int, need: int) -> Image.Image | None:
    """JPEG decoded by libjpeg-turbo straight to the smallest DCT scale (n/8) that still covers every
    target: most of a web JPEG's pixels are never materialised. None when not applicable."""
    try:
        import simplejpeg
    except ImportError:
        return None
    if im.mode not in ("RGB", "L"):  # CMYK/YCCK: PIL knows Adobe's inverted CMYK, libjpeg-turbo does not
        return None
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=need, min_width=need, strict=True)
    except ValueError as e:  # truncated or corrupt: strict mode says so instead of filling in grey
        raise DecodeFailure(DECODE_ERROR, f"{type(e).__name__}: {e}") from None
    return orient(Image.fromarray(arr), orientation)


def inspect(data: bytes, max_pixels: int, formats: tuple[str, ...]) -> tuple[Image.Image, int, int, int]:
    """The header checks of `decode`, without decoding a pixel → (opened image, EXIF orientation,
    width, height as shown); raises DecodeFailure."""
    if not data:
        raise DecodeFailure(DECODE_ERROR, "empty file")
    if _CRASH_MARKER and data.startswith(_CRASH_MARKER):
        os.abort()
    if _HANG_MARKER and data.startswith(_HANG_MARKER):
        while True:
            time.sleep(3600)
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
    width, height = im.size[::-1] if orientation in ORIENTATION_SWAPS else im.size
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


def phash(im: Image.Image) -> str:
    """The image's 64-bit perceptual hash as 16 hex digits: imagehash's `phash` (DCT of a 32×32 grey
    thumbnail, the 8×8 lowest frequencies against their median) of the whole image as decoded."""
    import imagehash

    # imagehash would make the thumbnail itself (the whole image to grey, then a Lanczos resize: ~0.7 ms a
    # web image); an area average to 32×32 first, then grey, costs a fifth of that, and hashes alike
    thumb = im.resize((32, 32), Image.Resampling.BOX).convert("L")
    return str(imagehash.phash(thumb))


def decode(
    data: bytes, targets: tuple[Target, ...], max_pixels: int, formats: tuple[str, ...], draft: bool = True,
    fast: bool = False,
) -> tuple[dict[str, np.ndarray], int, int]:
    """Decodes once → ({target name: uint8 HxWx3}, width, height); raises DecodeFailure.

    `fast`: JPEGs through libjpeg-turbo's scaled decoding and an area resize (embeddings within
    cos 0.99 of the processor path, about 3× the speed); otherwise PIL and the processor's own filter,
    bit-identical to the processor path (with `draft`, JPEGs ≥2× the target decode DCT-scaled first)."""
    pixels, width, height, _ = decode_hashed(data, targets, max_pixels, formats, draft, fast, with_phash=False)
    return pixels, width, height


def decode_hashed(
    data: bytes, targets: tuple[Target, ...], max_pixels: int, formats: tuple[str, ...], draft: bool = True,
    fast: bool = False, with_phash: bool = True,
) -> tuple[dict[str, np.ndarray], int, int, str | None]:
    """`decode`, and the perceptual hash of the pixels it decoded (phash; None without `with_phash`):
    the image is in memory already, at most a DCT-scaled step above the largest target."""
    im, orientation, width, height = inspect(data, max_pixels, formats)
    try:
        need = draft_need(targets, width, height) if targets else 0
        if fast and im.format == "JPEG" and targets and (turbo := _turbo(data, im, targets, orientation, need)) is not None:
            return ({t.name: resize_to(turbo, t, Image.Resampling.BOX) for t in targets}, width, height,
                    phash(turbo) if with_phash else None)
        if draft and im.format == "JPEG" and targets:
            # DCT-domain downscale: decode at 1/2, 1/4 or 1/8 when the result still covers every target.
            im.draft("RGB", (need, need))
        im.load()  # truncated data raises here
        im = to_rgb(orient(im, orientation))
        return {t.name: resize_to(im, t) for t in targets}, width, height, phash(im) if with_phash else None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DecodeFailure(DECODE_ERROR, f"{type(e).__name__}: {e}") from None
    except MemoryError:
        raise DecodeFailure(TOO_LARGE, "out of memory while decoding") from None


# (status, pixels by target | GPU-decode mark (see schema.GPU_DECODE) | error message, width, height,
#  perceptual hash or None)
Result = tuple[str, Any, Any, Any, Any]


def decode_many(datas: list[bytes], targets: tuple[Target, ...], cfg: DecodeConfig) -> list[Result]:
    """Each image decoded to every target, with its perceptual hash; with `decode.device: cuda`, only its
    header checked (no pixels here, so no hash)."""
    out: list[Result] = []
    for data in datas:
        try:
            if cfg.device == "cuda":
                im, orientation, w, h = inspect(data, cfg.max_pixels, cfg.formats)
                out.append((OK, orientation if gpu_decodable(im, data) else 0, w, h, None))
            else:
                pixels, w, h, hashed = decode_hashed(data, targets, cfg.max_pixels, cfg.formats, cfg.draft, cfg.fast)
                out.append((OK, pixels, w, h, hashed))
        except DecodeFailure as e:
            out.append((e.kind, str(e)[:500], None, None, None))
    return out
