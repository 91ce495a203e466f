"""CaptionImages: adds `captions` (candidates, best first) and `caption` (the first) to ok rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import CaptionConfig
from pipeline.gpu_decode import stage_pixels
from pipeline.models.batching import split_on_oom
from pipeline.models.captioner import PIXELS_CAPTION, Captioner, load_captioner
from pipeline.schema import CAPTION, CAPTIONS, OK, STATUS


class CaptionImages:
    """One instance per actor: weights load once per GPU (or CPU worker)."""

    def __init__(
        self,
        cfg: CaptionConfig,
        column: str = PIXELS_CAPTION,
        storage_options: dict[str, Any] | None = None,
        load: Callable[..., Captioner] = load_captioner,
    ):
        self.captioner, self.column = load(cfg, storage_options), column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.flatnonzero(batch[STATUS] == OK)
        n = len(batch[STATUS])
        captions = np.empty(n, dtype=object)
        captions[:] = [[] for _ in range(n)]
        caption = np.full(n, None, dtype=object)
        ok, pixels = stage_pixels(batch, self.column, ok, self.captioner)
        if len(ok):
            for i, cands in zip(ok, split_on_oom(self.captioner.caption, pixels), strict=True):
                captions[i], caption[i] = cands, cands[0]
        batch[CAPTIONS], batch[CAPTION] = captions, caption
        return batch
