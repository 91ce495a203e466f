"""CaptionImages: adds `captions` (candidates, best first) and `caption` (the first) to ok rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import CaptionConfig
from pipeline.decode.gpu import stage_pixels
from pipeline.models.captioner import PIXELS_CAPTION, Captioner, load_captioner
from pipeline.schema import CAPTION, CAPTIONS, STATUS
from pipeline.stages.rows import ok_rows, run_model, scatter, take


class CaptionImages:
    """One instance per actor: weights load once per GPU (or CPU worker)."""

    def __init__(self, cfg: CaptionConfig, pixels: str = PIXELS_CAPTION, storage_options: dict[str, Any] | None = None,
                 load: Callable[..., Captioner] = load_captioner):
        self.captioner, self.column = load(cfg, storage_options), pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[STATUS])
        rows, pixels = stage_pixels(batch, self.column, ok_rows(batch), self.captioner)
        rows, candidates = run_model(batch, rows, lambda ix: self.captioner.caption(take(pixels, ix)))
        batch[CAPTIONS] = scatter(n, rows, candidates, fill=[])
        batch[CAPTION] = scatter(n, rows, [c[0] for c in candidates])
        return batch
