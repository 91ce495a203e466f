"""EmbedImages (CLIP image and alt-text embeddings, the `embed` job) and EmbedPrompts (the chosen
caption → a sentence embedding: Kaggle's prompt embedding)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import ClipConfig, CurateConfig, EmbedConfig, TextEmbedConfig
from pipeline.models.clip import ClipEmbedder, load_clip
from pipeline.models.text_embed import TextEmbedder, load_text_embedder
from pipeline.schema import CAPTION, KEEP, OK, PROMPT_EMBEDDING, STATUS
from pipeline.stages.rows import ok_rows, run_model, scatter
from pipeline.stages.score import ScoreClip, curate_pass, thresholded


class EmbedImages(ScoreClip):
    """CLIP image embeddings of ok rows and text embeddings of their alt-text: ScoreClip without scores;
    with `curate`, the heads' scores, and `keep` (an ok row that clears their thresholds) where thresholded."""

    score = False

    def __init__(self, cfg: ClipConfig, pixels: str, storage_options: dict[str, Any] | None = None,
                 embed: EmbedConfig | None = None, load: Callable[..., ClipEmbedder] = load_clip,
                 curate: CurateConfig | None = None):
        super().__init__(cfg, pixels, storage_options, embed or EmbedConfig(), load, curate)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = super().__call__(batch)
        if thresholded(self.curate):
            passes = curate_pass(batch, self.curate)
            assert passes is not None
            batch[KEEP] = np.array([bool(p) if s == OK else None for s, p in zip(batch[STATUS], passes, strict=True)],
                                   dtype=object)
        return batch


class EmbedPrompts:
    """The chosen caption of ok rows → a sentence embedding in `dtype`."""

    def __init__(self, cfg: TextEmbedConfig, pixels: str | None = None, storage_options: dict[str, Any] | None = None,
                 dtype: str = "float32", load: Callable[..., TextEmbedder] = load_text_embedder):
        self.model, self.dtype = load(cfg, storage_options), dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.array([i for i in ok_rows(batch) if isinstance(batch[CAPTION][i], str)], dtype=np.int64)
        captions = [batch[CAPTION][i] for i in rows]
        rows, vectors = run_model(batch, rows, lambda ix: list(self.model.embed([captions[j] for j in ix]).astype(self.dtype)))
        batch[PROMPT_EMBEDDING] = scatter(len(batch[STATUS]), rows, vectors)
        return batch
