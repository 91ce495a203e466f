"""A corpus of hostile inputs, generated (no binaries in git): each sample with the status it must get."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.samples import add_member


def encode(im: Image.Image, fmt: str, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width×height but carries one tiny IDAT: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 header is patched to claim width×height."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (10, 20, 30)), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 24), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated() -> bytes:
    im = Image.new("RGB", (60, 30), (200, 10, 10))
    exif = im.getexif()
    exif[0x0112] = 8
    return encode(im, "JPEG", exif=exif)


def corpus(photo: np.ndarray, poison: bytes) -> tuple[dict[str, bytes], dict[str, str]]:
    """Members of one webdataset tar, and the status each sample's row must get."""
    good = encode(Image.fromarray(photo), "JPEG")
    p = Image.new("P", (20, 20), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    big = Image.fromarray(np.tile(photo, (16, 24, 1))[:4000, :6000])  # 24 MP, legal
    m: dict[str, bytes] = {}
    expect: dict[str, str] = {}

    def add(key: str, ext: str, data: bytes, status: str, text: bytes | None = b"alt") -> None:
        m[f"{key}.{ext}"] = data
        if text is not None:
            m[f"{key}.txt"] = text
        expect[key] = status

    add("good", "jpg", good, "ok")
    add("truncated", "jpg", good[: len(good) // 3], "decode_error")
    add("corrupt", "jpg", bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)), "unsupported_format")
    add("zero", "jpg", b"", "decode_error")
    add("html", "jpg", b"<html><body>404 not found</body></html>", "unsupported_format")
    add("png_bomb", "png", png_header_only(20000, 20000), "too_large")
    add("warning_band", "png", png_header_only(12000, 10000), "too_large")  # 120 MP: PIL only warns
    add("jpeg_bomb", "jpg", jpeg_claiming(65000, 65000), "too_large")
    add("huge_legal", "jpg", encode(big, "JPEG", quality=80), "ok")
    add("banner", "png", encode(Image.new("RGB", (5000, 1), (1, 2, 3)), "PNG"), "ok")
    add("pole", "png", encode(Image.new("RGB", (1, 5000), (1, 2, 3)), "PNG"), "ok")
    add("pixel", "png", encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "ok")
    add("cmyk", "jpg", encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"), "ok")
    add("sixteen", "png", encode(Image.new("I;16", (40, 30), 50000), "PNG"), "ok")
    add("palette_alpha", "png", encode(p, "PNG", transparency=0), "ok")
    add("rgba", "png", encode(Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG"), "ok")
    add("anim_gif", "gif", animated("GIF"), "ok")
    add("anim_webp", "webp", animated("WEBP"), "ok")
    add("rotated", "jpg", exif_rotated(), "ok")
    add("ppm", "jpg", encode(Image.new("RGB", (8, 8)), "PPM"), "unsupported_format")  # outside the allow-list
    add("../escape", "jpg", good, "ok")  # a name only: never a path on disk
    add("/etc/absolute", "jpg", good, "ok")
    add("notext", "jpg", good, "ok", text=None)
    m["textonly.txt"] = b"a caption without an image"
    expect["textonly"] = "missing_image"
    add("latin1", "jpg", good, "ok", text=b"caf\xe9 cr\xe8me \xff\xfe")
    add("longtext", "jpg", good, "ok", text=b"spam " * 200_000)
    add("poison", "jpg", poison + good, "decode_crash")
    return m, expect


def write_tar(path, members: dict[str, bytes], link_key: str | None = None, dup_key: str | None = None) -> None:  # type: ignore[no-untyped-def]
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            add_member(tar, name, data)
        if link_key:
            info = tarfile.TarInfo(f"{link_key}.jpg")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        if dup_key:  # the same key again, after other members
            add_member(tar, f"{dup_key}.jpg", members[f"{dup_key}.jpg"])


def truncated_parquet(path, photo_jpeg: bytes) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": ["a", "b"], "jpg": [photo_jpeg, photo_jpeg]}), buf)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
