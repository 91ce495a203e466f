"""DecodeImages: image bytes → uint8 pixels at each model's input size, once per image."""

from __future__ import annotations

import hashlib
import importlib
import io
import json

import numpy as np

from pipeline.config import DecodeConfig, InputConfig
from pipeline.decode.geometry import Target
from pipeline.decode.image import DecodeFailure, Result, decode_many, inspect
from pipeline.decode.isolated import IsolatedDecoder
from pipeline.decode.regions import RegionError, mask_box, parse_boxes, read_mask
from pipeline.schema import (
    BAD_REGION,
    ERROR,
    GPU_DECODE,
    HEIGHT,
    IMAGE,
    MASK,
    META,
    OK,
    PHASH,
    REGIONS,
    SHA256,
    STATUS,
    WIDTH,
)


def _column(t: Target, n: int) -> np.ndarray:
    """A target's pixel column: (n, H, W, 3) uint8; for a dynamic target (each image its own size) an
    object column of HxWx3 arrays, which Ray Data carries as a variable-shaped tensor column."""
    if not t.dynamic:
        return np.zeros((n, t.height, t.width, 3), dtype=np.uint8)
    col = np.empty(n, dtype=object)
    col[:] = [np.zeros((1, 1, 3), dtype=np.uint8) for _ in range(n)]  # failed rows: never read
    return col


def no_huge_pages() -> None:
    """Stops numpy asking the kernel for huge pages (madvise) behind the arrays it allocates from now on in
    this process. numpy asks for every array of 4 MB or more; a kernel whose transparent huge pages follow
    such requests with compaction (`defrag: madvise`, a common default) then finds and zeroes a 2 MB page
    at the first write of each, which made filling a block's fresh pixel column (64 images at 224 px, 9.6
    MB) cost 0.24 ms an image instead of 0.09 (BENCHMARKS.md). A process-wide numpy switch: it only
    changes how new arrays' memory is paged, never their contents; the decode stage's worker has nothing
    that needs huge pages. (NUMPY_MADVISE_HUGEPAGE=0 does the same, but only where set before numpy's
    import, which a Ray worker has done before any stage runs.)"""
    importlib.import_module("numpy._core.multiarray")._set_madvise_hugepage(False)


def sha256_of(data: bytes, meta: str | None) -> str:
    """The image's sha256: img2dataset's own where its row carries one (`compute_hash`, its default: the
    downloaded file's), else of the bytes read."""
    if meta and '"sha256"' in meta:
        try:
            given = json.loads(meta).get("sha256")
        except (ValueError, AttributeError):
            given = None
        if isinstance(given, str) and len(given) == 64:
            return given.lower()
    return hashlib.sha256(data).hexdigest()


class DecodeImages:
    """Adds one pixel column per target, `width`/`height`, the hashes of exact and perceptual duplicates
    (`sha256` of every row with image bytes, `phash` of every decoded one); drops the bytes. Failed rows
    get a status. With `decode.device: cuda`: keeps the bytes of ok rows and adds GPU_DECODE instead of
    pixels (and no `phash`: the pixels are decoded on the GPU)."""

    def __init__(self, cfg: DecodeConfig, targets: tuple[Target, ...], inputs: InputConfig | None = None):
        self.cfg, self.targets, self.inputs = cfg, targets, inputs or InputConfig()
        no_huge_pages()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[STATUS])
        status = batch[STATUS].astype(object)
        error = batch[ERROR].astype(object)
        on_gpu = self.cfg.device == "cuda"
        pixels = {} if on_gpu else {t.name: _column(t, n) for t in self.targets}
        mark = np.zeros(n, dtype=np.int8)
        width = np.full(n, None, dtype=object)
        height = np.full(n, None, dtype=object)
        phashes = np.full(n, None, dtype=object)
        rows = [i for i in range(n) if status[i] == OK]
        datas = [batch[IMAGE][i] for i in rows]
        metas = batch.get(META, np.full(n, None, dtype=object))
        sha = np.full(n, None, dtype=object)
        for i, data in zip(rows, datas, strict=True):
            sha[i] = sha256_of(data, metas[i])
        results: list[Result] = []
        step = self.cfg.batch_size  # images per call to the decoder (a fused read hands over whole blocks)
        fixed = [t.name for t in self.targets if not t.dynamic and t.name in pixels]
        for at in range(0, len(datas), step):
            chunk = datas[at : at + step]
            if self.cfg.isolate:
                # the child's pixels copied straight into their rows of the columns
                into = [{name: pixels[name][i] for name in fixed} for i in rows[at : at + step]]
                results += IsolatedDecoder.decode(chunk, self.targets, self.cfg, into)
            else:
                results += decode_many(chunk, self.targets, self.cfg)
        for i, (kind, payload, w, h, hashed) in zip(rows, results, strict=True):
            if kind != OK:
                status[i], error[i] = kind, payload
                continue
            width[i], height[i], phashes[i] = w, h, hashed
            if on_gpu:
                mark[i] = payload
                continue
            for name, arr in payload.items():
                pixels[name][i] = arr
        if on_gpu:  # the model stages decode the bytes of ok rows; those of failed rows are not needed
            image = batch[IMAGE].astype(object)
            image[status != OK] = b""
            batch = {**batch, IMAGE: image, GPU_DECODE: mark}
        else:
            batch = {k: v for k, v in batch.items() if k != IMAGE}  # the heaviest column: gone after decode
        batch.update(pixels)
        batch[REGIONS], batch[MASK] = self._regions(batch, datas, rows, status, error, width, height)
        batch[STATUS], batch[ERROR], batch[WIDTH], batch[HEIGHT] = status, error, width, height
        batch[SHA256], batch[PHASH] = sha, phashes
        return batch

    def _regions(self, batch: dict[str, np.ndarray], datas: list[bytes], rows: list[int], status: np.ndarray,
                 error: np.ndarray, width: np.ndarray, height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each ok row's regions (boxes, then its mask's box) checked against its image, and its mask as a
        PNG in the shown orientation; a region that cannot be used makes the row `bad_region`."""
        n = len(status)
        regions, masks = np.full(n, None, dtype=object), np.full(n, None, dtype=object)
        metas = batch.get(META, np.full(n, None, dtype=object))
        raw_masks = batch.get(MASK, np.full(n, None, dtype=object))
        for i, data in zip(rows, datas, strict=True):
            if status[i] != OK or (raw_masks[i] is None and not metas[i]):
                continue
            try:
                w, h = int(width[i]), int(height[i])
                boxes = parse_boxes(metas[i], self.inputs.regions_field, self.inputs.region_units, w, h)
                if raw_masks[i] is not None:
                    # The mask is drawn on the stored image: its size and EXIF orientation, read from the header.
                    im, orientation, _, _ = inspect(data, self.cfg.max_pixels, self.cfg.formats)
                    mask = read_mask(raw_masks[i], im.size, orientation, self.cfg.max_pixels)
                    boxes.append(mask_box(mask))
                    buf = io.BytesIO()
                    mask.save(buf, format="PNG")
                    masks[i] = buf.getvalue()
            except (RegionError, DecodeFailure) as e:
                status[i], error[i] = BAD_REGION, str(e)[:500]
                continue
            if boxes:
                regions[i] = [list(b) for b in boxes]
        return regions, masks
