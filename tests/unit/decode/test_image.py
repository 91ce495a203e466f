import io

import numpy as np
import pytest
from PIL import Image

from pipeline.decode.geometry import Target
from pipeline.decode.image import DecodeFailure, decode
from pipeline.schema import DECODE_ERROR, TOO_LARGE, UNSUPPORTED_FORMAT

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
T = (Target("p", 32, 32),)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def run(data: bytes, targets=T, max_pixels=10_000_000, formats=FORMATS, draft=False):
    return decode(data, targets, max_pixels, formats, draft)


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out, w, h = run(encode(im, "JPEG", exif=exif, quality=95), (Target("p", 40, 20),))
    assert (w, h) == (20, 40)  # the displayed size
    p = out["p"].astype(int)
    assert p[:18, :, 0].mean() > 200 and p[:18, :, 1].mean() < 60  # red ends up on top
    assert p[22:, :, 0].mean() < 60


@pytest.mark.parametrize("mode", ["CMYK", "L", "1", "P", "I;16", "RGBA", "LA"])
def test_every_mode_becomes_rgb(mode):
    im = Image.new("RGB", (16, 16), (200, 100, 50)).convert(mode) if mode != "I;16" else Image.new("I;16", (16, 16), 40000)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out, w, h = run(encode(im, fmt))
    assert out["p"].shape == (32, 32, 3) and out["p"].dtype == np.uint8
    assert (w, h) == (16, 16)


def test_16_bit_is_scaled_not_saturated():
    out, _, _ = run(encode(Image.new("I;16", (8, 8), 32768), "PNG"))
    assert 120 <= out["p"].mean() <= 135  # half of 65535 → half of 255, not clipped to 255


def test_transparency_is_composited_on_white():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red: hidden colour
    out, _, _ = run(encode(im, "PNG"))
    assert out["p"].min() == 255
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    out, _, _ = run(encode(p, "PNG", transparency=0))
    assert out["p"].min() == 255


def test_truncated_jpeg_is_an_error():
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(DecodeFailure) as e:
        run(data[: len(data) // 2])
    assert e.value.kind == DECODE_ERROR


@pytest.mark.parametrize("data, kind", [(b"", DECODE_ERROR), (b"this is text, not an image", UNSUPPORTED_FORMAT)])
def test_empty_and_non_image(data, kind):
    with pytest.raises(DecodeFailure) as e:
        run(data)
    assert e.value.kind == kind


def test_format_outside_allow_list_is_refused():
    data = encode(Image.new("RGB", (8, 8)), "BMP")
    with pytest.raises(DecodeFailure) as e:
        run(data, formats=("JPEG", "PNG"))
    assert e.value.kind == UNSUPPORTED_FORMAT


def test_pixel_cap_checked_from_header():
    data = encode(Image.new("L", (4000, 3000)), "PNG")  # 12 MP of zeros compresses to a few KB
    with pytest.raises(DecodeFailure) as e:
        run(data, max_pixels=1_000_000)
    assert e.value.kind == TOO_LARGE and "4000x3000" in str(e.value)


def test_draft_decodes_large_jpeg_smaller_but_close(photos):
    big = Image.fromarray(photos[0]).resize((1024, 1024))
    data = encode(big, "JPEG", quality=92)
    full, _, _ = run(data, (Target("p", 128, 128),), draft=False)
    fast, w, h = run(data, (Target("p", 128, 128),), draft=True)
    assert (w, h) == (1024, 1024)  # the original size is reported
    a, b = full["p"].astype(float).ravel(), fast["p"].astype(float).ravel()
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_squash_resize_matches_the_hf_processor_exactly(photos):
    from transformers import BlipImageProcessorPil

    proc = BlipImageProcessorPil(size={"height": 64, "width": 64})
    data = encode(Image.fromarray(photos[1]), "PNG")
    ours, _, _ = run(data, (Target("p", 64, 64),))
    ref = proc(images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="np")["pixel_values"]
    via_ours = proc(images=[ours["p"]], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(ref, via_ours)


def test_fast_jpeg_path_is_close_to_the_processor_path_and_keeps_orientation(photos):
    big = Image.fromarray(photos[2]).resize((1000, 700))
    data = encode(big, "JPEG", quality=90)
    t = (Target("p", 96, 96),)
    exact, _, _ = run(data, t, draft=False)
    fast, w, h = decode(data, t, 10_000_000, FORMATS, draft=False, fast=True)
    assert (w, h) == (1000, 700)
    a, b = exact["p"].astype(float).ravel() - 128, fast["p"].astype(float).ravel() - 128
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
    # EXIF orientation is applied on the fast path too.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    out, w, h = decode(encode(im, "JPEG", exif=exif, quality=95), (Target("p", 40, 20),), 10**7, FORMATS, fast=True)
    assert (w, h) == (20, 40) and out["p"][:18, :, 0].mean() > 200
    # Truncation is an error, not grey filler.
    with pytest.raises(DecodeFailure) as e:
        decode(data[: len(data) // 2], t, 10**7, FORMATS, fast=True)
    assert e.value.kind == DECODE_ERROR
