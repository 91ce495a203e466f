"""DecodeImages: image bytes → uint8 pixels at each model's input size, once per image."""

from __future__ import annotations

import numpy as np

from pipeline.config import DecodeConfig
from pipeline.image import DecodeFailure, Target, decode
from pipeline.schema import ERROR, HEIGHT, IMAGE, OK, STATUS, WIDTH


class DecodeImages:
    """Adds one pixel column per target, `width`/`height`; drops the bytes. Failed rows get a status."""

    def __init__(self, cfg: DecodeConfig, targets: tuple[Target, ...]):
        self.cfg, self.targets = cfg, targets

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[STATUS])
        status = batch[STATUS].astype(object)
        error = batch[ERROR].astype(object)
        pixels = {t.name: np.zeros((n, t.height, t.width, 3), dtype=np.uint8) for t in self.targets}
        width = np.full(n, None, dtype=object)
        height = np.full(n, None, dtype=object)
        for i in range(n):
            if status[i] != OK:
                continue
            try:
                out, width[i], height[i] = decode(
                    batch[IMAGE][i], self.targets, self.cfg.max_pixels, self.cfg.formats, self.cfg.draft
                )
            except DecodeFailure as e:
                status[i], error[i] = e.kind, str(e)[:500]
                continue
            for name, arr in out.items():
                pixels[name][i] = arr
        batch = {k: v for k, v in batch.items() if k != IMAGE}  # the heaviest column: gone after decode
        batch.update(pixels)
        batch[STATUS], batch[ERROR], batch[WIDTH], batch[HEIGHT] = status, error, width, height
        return batch
