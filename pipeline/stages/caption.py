"""CaptionImages: adds `captions` (candidates, best first), `caption_flags` (each one's flags) and `caption`
(the first) to ok rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import CaptionConfig
from pipeline.decode.gpu import stage_pixels
from pipeline.decode.regions import row_maps
from pipeline.decode.targets import processor_size_target
from pipeline.models.captioner import PIXELS_CAPTION, Captioner, load_captioner
from pipeline.models.flags import text_flags
from pipeline.schema import CAPTION, CAPTION_FLAGS, CAPTIONS, HEIGHT, MASK, REGION_CAPTIONS, REGIONS, STATUS, WIDTH
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
        staged, pixels = stage_pixels(batch, self.column, ok_rows(batch), self.captioner)
        rows, results = run_model(batch, staged, lambda ix: self._caption(take(pixels, ix)))
        batch[CAPTIONS] = scatter(n, rows, [r[0] for r in results], fill=[])
        batch[CAPTION_FLAGS] = scatter(n, rows, [r[1] for r in results], fill=[])
        batch[CAPTION] = scatter(n, rows, [r[0][0] for r in results])
        batch[REGION_CAPTIONS] = scatter(n, [], [])
        if getattr(self.captioner, "regions", False) and REGIONS in batch:
            self._regions(batch, staged, rows, pixels)
        return batch

    def _regions(self, batch: dict[str, np.ndarray], staged: np.ndarray, rows: np.ndarray, pixels: Any) -> None:
        """A caption per region (decode/regions.py) of each captioned row, from a region-aware captioner:
        Florence-2's region prompts, LLaVA with an Alpha-CLIP tower."""
        pos = {r: j for j, r in enumerate(staged)}  # a row → its place in `pixels`
        with_regions = np.array([r for r in rows if batch[REGIONS][r]], dtype=np.int64)
        target = processor_size_target(self.captioner.image_processor, self.column)
        regions = []
        for r in with_regions:
            size = (int(batch[WIDTH][r]), int(batch[HEIGHT][r]))
            mask = batch[MASK][r] if MASK in batch else None
            regions.append((batch[REGIONS][r], row_maps(batch[REGIONS][r], mask, *size, target), size))

        def run(ix: np.ndarray) -> list[list[str]]:
            own = np.array([pos[with_regions[j]] for j in ix], dtype=np.int64)
            return self.captioner.caption_regions(take(pixels, own), [regions[j] for j in ix])  # type: ignore[attr-defined]

        done, captions = run_model(batch, with_regions, run)
        batch[REGION_CAPTIONS] = scatter(len(batch[STATUS]), done, captions)
