"""The hashes of duplicates, made at decode: sha256 of the bytes (img2dataset's own where its row has it)
and imagehash's phash of the decoded image, stable across re-encodes and resizes, far apart across images."""

from __future__ import annotations

import hashlib
import io
import json

import imagehash
import numpy as np
from PIL import Image

from pipeline.config import DecodeConfig
from pipeline.decode.geometry import Target
from pipeline.schema import ERROR, IMAGE, META, OK, PHASH, SHA256, STATUS
from pipeline.stages.decode import DecodeImages
from tests.fixtures.samples import jpeg


def rows(datas: list[bytes], metas: list[str | None] | None = None) -> dict[str, np.ndarray]:
    n = len(datas)
    col = np.empty(n, dtype=object)
    col[:] = datas
    meta = np.empty(n, dtype=object)
    meta[:] = metas or [None] * n
    return {IMAGE: col, META: meta, STATUS: np.array([OK] * n, dtype=object), ERROR: np.full(n, None, dtype=object)}


def distance(a: str, b: str) -> int:
    return imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b)


def resized(data: bytes, scale: float, quality: int = 90) -> bytes:
    im = Image.open(io.BytesIO(data))
    buf = io.BytesIO()
    im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_every_decoded_row_gets_its_sha256_and_phash(photos):
    datas = [jpeg(photos[0]), jpeg(photos[1]), b"not an image"]
    given = "ab" * 32  # img2dataset's (of the downloaded file): used as it is
    out = DecodeImages(DecodeConfig(isolate=False), (Target("p", 32, 32),))(
        rows(datas, [None, json.dumps({"url": "u", "sha256": given.upper()}), None]))
    assert list(out[STATUS]) == [OK, OK, "unsupported_format"]
    assert list(out[SHA256]) == [hashlib.sha256(datas[0]).hexdigest(), given, hashlib.sha256(datas[2]).hexdigest()]
    assert out[PHASH][2] is None and len(out[PHASH][0]) == 16
    # imagehash's phash of the image, up to the thumbnail's filter: a few bits at most
    assert distance(out[PHASH][0], str(imagehash.phash(Image.open(io.BytesIO(datas[0]))))) <= 6


def test_phash_holds_across_reencodes_and_resizes_and_tells_images_apart(photos):
    distinct = list({p.tobytes(): p for p in photos}.values())[:12]  # scikit-image's `cat` is its `chelsea`
    originals = [jpeg(p, quality=92) for p in distinct]
    variants = [[resized(d, 1.0, 60), resized(d, 0.5), resized(d, 2.0, 80)] for d in originals]
    flat = originals + [v for vs in variants for v in vs]
    for isolate in (False, True):
        out = DecodeImages(DecodeConfig(isolate=isolate), (Target("p", 224, 224),))(rows(flat))
        h = list(out[PHASH])
        base, var = h[:12], h[12:]
        same = [distance(base[i], var[3 * i + k]) for i in range(12) for k in range(3)]
        other = [distance(base[i], base[j]) for i in range(12) for j in range(i + 1, 12)]
        assert max(same) <= 8 < min(other), (same, other)
