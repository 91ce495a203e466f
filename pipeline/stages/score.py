"""ScoreItm / ScoreClip: score the alt-text and every candidate caption of ok rows against the image.

ScoreClip also writes CLIP embeddings when asked (`clean.embed`), from the same forward pass; the
`embed` job's EmbedImages is the same stage with scoring off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import ClipConfig, EmbedConfig, ItmConfig
from pipeline.gpu_decode import stage_pixels
from pipeline.models.clip import ClipEmbedder, load_clip
from pipeline.models.itm import BlipItm, load_itm
from pipeline.schema import CAPTIONS, IMAGE_EMBEDDING, OK, SCORE_COLUMNS, STATUS, TEXT, TEXT_EMBEDDING


def texts_of(batch: dict[str, np.ndarray], rows: np.ndarray) -> tuple[list[list[str]], list[bool]]:
    """Per row: [alt-text (if any)] + candidates; and whether the first text is the alt-text."""
    texts, has_text = [], []
    for i in rows:
        alt = batch[TEXT][i]
        cands = list(batch[CAPTIONS][i]) if CAPTIONS in batch and batch[CAPTIONS][i] is not None else []
        has = isinstance(alt, str) and alt.strip() != ""
        texts.append(([alt] if has else []) + cands)
        has_text.append(has)
    return texts, has_text


def put_scores(batch: dict[str, np.ndarray], kind: str, rows: np.ndarray, scores: list[list[float]],
               has_text: list[bool]) -> None:
    n = len(batch[STATUS])
    text_col = np.full(n, None, dtype=object)
    caps_col = np.full(n, None, dtype=object)
    for i, s, has in zip(rows, scores, has_text, strict=True):
        text_col[i] = s[0] if has else None
        caps_col[i] = s[1:] if has else s
    batch[SCORE_COLUMNS[kind][0]], batch[SCORE_COLUMNS[kind][1]] = text_col, caps_col


class ScoreItm:
    """BLIP ITM match probability and ITC cosine for every text of ok rows."""

    def __init__(self, cfg: ItmConfig, column: str, storage_options: dict[str, Any] | None = None,
                 load: Callable[..., BlipItm] = load_itm):
        self.model, self.column = load(cfg, storage_options), column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, pixels = stage_pixels(batch, self.column, np.flatnonzero(batch[STATUS] == OK), self.model)
        texts, has_text = texts_of(batch, rows)
        itm, itc = self.model.score(pixels, texts) if len(rows) else ([], [])
        put_scores(batch, "itm", rows, itm, has_text)
        put_scores(batch, "itc", rows, itc, has_text)
        return batch


def _rows_of(vectors: np.ndarray, rows: np.ndarray, n: int, dtype: str) -> np.ndarray:
    col = np.full(n, None, dtype=object)
    for i, v in zip(rows, vectors.astype(dtype), strict=True):
        col[i] = v
    return col


class ScoreClip:
    """CLIP cosine for every text of ok rows; with `embed`, also the image and alt-text embeddings."""

    score = True

    def __init__(self, cfg: ClipConfig, column: str, embed: EmbedConfig | None = None,
                 storage_options: dict[str, Any] | None = None, load: Callable[..., ClipEmbedder] = load_clip):
        self.model, self.column, self.embed = load(cfg, storage_options), column, embed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        n = len(batch[STATUS])
        rows, pixels = stage_pixels(batch, self.column, np.flatnonzero(batch[STATUS] == OK), self.model)
        images = self.model.image_features(pixels)  # queued on the GPU: the texts are tokenised meanwhile
        texts, has_text = texts_of(batch, rows)
        embed_text = self.embed is not None and self.embed.text
        # One text forward for both the scores (every text) and the alt-text embeddings (first texts).
        if self.score:
            per_row = texts
        else:
            per_row = [ts[:1] if has and embed_text else [] for ts, has in zip(texts, has_text, strict=True)]
        flat = self.model.text_features([t for ts in per_row for t in ts])
        starts = np.cumsum([0, *(len(ts) for ts in per_row)])[:-1].astype(np.int64)
        if self.score:
            owner = torch.from_numpy(np.repeat(np.arange(len(per_row)), [len(ts) for ts in per_row])).to(images.device)
            with torch.inference_mode():
                sims = (flat * images[owner]).sum(-1).cpu().numpy()
            put_scores(batch, "clip", rows, [sims[s : s + len(ts)].tolist() for s, ts in zip(starts, per_row, strict=True)],
                       has_text)
        if self.embed is not None:
            batch[IMAGE_EMBEDDING] = _rows_of(images.cpu().numpy(), rows, n, self.embed.dtype)
            if embed_text:
                alt = np.array(has_text, dtype=bool)
                batch[TEXT_EMBEDDING] = _rows_of(flat.cpu().numpy()[starts[alt]], rows[alt], n, self.embed.dtype)
        return batch


class EmbedImages(ScoreClip):
    """CLIP image embeddings of ok rows and text embeddings of their alt-text (the `embed` job)."""

    score = False

    def __init__(self, cfg: ClipConfig, column: str, embed: EmbedConfig,
                 storage_options: dict[str, Any] | None = None, load: Callable[..., ClipEmbedder] = load_clip):
        super().__init__(cfg, column, embed, storage_options, load)
