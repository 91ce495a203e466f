"""CaptionImages: adds `captions` (candidates, best first), `caption_flags` (each one's flags) and `caption`
(the first) to ok rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import CaptionConfig
from pipeline.decode.gpu import stage_pixels
from pipeline.models.captioner import PIXELS_CAPTION, Captioner, load_captioner
from pipeline.models.flags import text_flags
from pipeline.schema import CAPTION, CAPTION_FLAGS, CAPTIONS, STATUS
from pipeline.stages.rows import ok_rows, run_model, scatter, take


class CaptionImages:
    """One instance per actor: weights load once per GPU (or CPU worker)."""

    def __init__(self, cfg: CaptionConfig, pixels: str = PIXELS_CAPTION, storage_options: dict[str, Any] | None = None,
                 load: Callable[..., Captioner] = load_captioner):
        self.captioner, self.column, self.cfg = load(cfg, storage_options), pixels, cfg

    def _caption(self, pixels: Any) -> list[tuple[list[str], list[list[str]]]]:
        """Per image: (candidates, each candidate's flags): from the token ids where the captioner has
        them (caption_with_flags), from the text otherwise."""
        with_flags = getattr(self.captioner, "caption_with_flags", None)
        if with_flags is not None:
            texts, flags = with_flags(pixels)
        else:
            texts = self.captioner.caption(pixels)
            flags = [[text_flags(t, self.cfg.prompt) for t in ts] for ts in texts]
        return list(zip(texts, flags, strict=True))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[STATUS])
        rows, pixels = stage_pixels(batch, self.column, ok_rows(batch), self.captioner)
        rows, results = run_model(batch, rows, lambda ix: self._caption(take(pixels, ix)))
        batch[CAPTIONS] = scatter(n, rows, [r[0] for r in results], fill=[])
        batch[CAPTION_FLAGS] = scatter(n, rows, [r[1] for r in results], fill=[])
        batch[CAPTION] = scatter(n, rows, [r[0][0] for r in results])
        return batch
