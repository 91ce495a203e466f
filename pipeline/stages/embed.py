"""EmbedPrompts: the chosen caption of ok rows → a sentence embedding (Kaggle's prompt embedding)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import TextEmbedConfig
from pipeline.models.text_embed import TextEmbedder, load_text_embedder
from pipeline.schema import CAPTION, OK, PROMPT_EMBEDDING, STATUS


class EmbedPrompts:
    def __init__(self, cfg: TextEmbedConfig, dtype: str = "float32", storage_options: dict[str, Any] | None = None,
                 load: Callable[..., TextEmbedder] = load_text_embedder):
        self.model, self.dtype = load(cfg, storage_options), dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[STATUS])
        rows = [i for i in np.flatnonzero(batch[STATUS] == OK) if isinstance(batch[CAPTION][i], str)]
        vectors = self.model.embed([batch[CAPTION][i] for i in rows]).astype(self.dtype)
        col = np.full(n, None, dtype=object)
        for i, v in zip(rows, vectors, strict=True):
            col[i] = v
        batch[PROMPT_EMBEDDING] = col
        return batch
