"""Sample shards in img2dataset's layout, made from the real photos scikit-image ships (for the demo,
tests and benchmarks); no binaries in git."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins", "horse", "hubble_deep_field",
          "immunohistochemistry", "moon", "page", "motorcycle_left", "brick", "grass", "gravel")
ALT_TEXTS = ("an astronaut in a white suit", "a cat lying down", "a cup of coffee on a saucer",
             "a rocket on the launch pad", "a cat looking at the camera", "a man with a camera",
             "coins on a table", "a horse", "stars in deep space", "a stained tissue sample", "the moon",
             "a page of text", "a motorcycle", "a brick wall", "grass", "gravel")


def photos(size: int | None = None) -> list[np.ndarray]:
    """Real photos as uint8 RGB (from scikit-image's package data), optionally resized to ~size px.

    Without scikit-image (an offline GPU box), textured synthetic images stand in: smooth colour fields
    with edges and grain, which JPEG compresses about as hard as a photo."""
    try:
        from skimage import data
    except ImportError:
        return synthetic_photos(size or 512)

    out = []
    for name in PHOTOS:
        try:
            arr = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a photo missing from this skimage version is skipped
            continue
        im = Image.fromarray(arr if arr.dtype == np.uint8 else (arr * 255).astype(np.uint8)).convert("RGB")
        if size:
            scale = size / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
        out.append(np.asarray(im))
    return out


def synthetic_photos(size: int, n: int = len(PHOTOS)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        h, w = size, int(size * rng.uniform(0.6, 1.0))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / size
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):  # low-frequency colour waves
            for _ in range(4):
                fx, fy, ph = rng.uniform(0.5, 6, 2).tolist() + [rng.uniform(0, 6.3)]
                img[..., c] += np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        img = (img - img.min()) / (np.ptp(img) + 1e-6) * 200
        for _ in range(12):  # hard-edged shapes
            y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
            img[y0 : y0 + int(rng.integers(10, h // 3)), x0 : x0 + int(rng.integers(10, w // 3))] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape)  # grain
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def samples(n: int, offset: int = 0, size: int | None = None) -> list[tuple[bytes, str]]:
    """n (jpeg bytes, alt-text) pairs cycling through the photos."""
    ph = photos(size)
    return [(jpeg(ph[(offset + i) % len(ph)]), ALT_TEXTS[(offset + i) % len(ph)]) for i in range(n)]


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(out: Path, n_shards: int, per_shard: int, size: int | None = 512) -> list[str]:
    """img2dataset layout: `{shard:05d}.tar` holding KEY.jpg, KEY.txt, KEY.json; returns the keys."""
    out.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(n_shards):
        with tarfile.open(out / f"{s:05d}.tar", "w") as tar:
            for i, (img, text) in enumerate(samples(per_shard, s * per_shard, size)):
                key = f"{s:05d}{i:04d}"
                add_member(tar, f"{key}.jpg", img)
                add_member(tar, f"{key}.txt", text.encode())
                add_member(tar, f"{key}.json", json.dumps({"url": f"https://example.com/{key}.jpg", "key": key}).encode())
                keys.append(key)
    return keys


def write_parquet(path: Path, n: int, size: int | None = 512) -> list[str]:
    """img2dataset's Parquet layout: `key`, `jpg` (bytes), `txt`, `url`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = samples(n, 0, size)
    keys = [f"p{i:06d}" for i in range(n)]
    table = pa.table({"key": keys, "jpg": [r[0] for r in rows], "txt": [r[1] for r in rows],
                      "url": [f"https://example.com/{k}.jpg" for k in keys]})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return keys


def write_folder(out: Path, n: int, size: int | None = 512) -> list[str]:
    """A folder of images (some in a subfolder) with same-name .txt for half of them."""
    keys = []
    for i, (img, text) in enumerate(samples(n, 0, size)):
        key = f"sub/img{i:03d}" if i % 3 == 0 else f"img{i:03d}"
        (out / key).parent.mkdir(parents=True, exist_ok=True)
        (out / f"{key}.jpg").write_bytes(img)
        if i % 2 == 0:
            (out / f"{key}.txt").write_text(text)
        keys.append(key)
    return keys


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Write sample webdataset shards from scikit-image photos.")
    p.add_argument("out", type=Path)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--per-shard", type=int, default=16)
    a = p.parse_args()
    print(f"wrote {len(write_webdataset(a.out, a.shards, a.per_shard))} samples to {a.out}")
