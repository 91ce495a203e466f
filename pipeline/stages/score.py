"""ScoreItm / ScoreClip: score the alt-text and every candidate caption of ok rows against the image.

ScoreClip also writes CLIP embeddings when asked (`clean.embed`), from the same forward pass; the
`embed` job's EmbedImages (embed.py) is the same stage with scoring off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.config import ClipConfig, CurateConfig, EmbedConfig, ItmConfig
from pipeline.decode.gpu import stage_pixels
from pipeline.decode.regions import row_maps
from pipeline.decode.targets import processor_size_target
from pipeline.models.clip import ClipEmbedder, load_clip
from pipeline.models.itm import BlipItm, load_itm
from pipeline.schema import (
    AESTHETIC_SCORE,
    HEIGHT,
    IMAGE_EMBEDDING,
    MASK,
    NSFW_SCORE,
    REGION_CAPTION_SCORES,
    REGION_EMBEDDINGS,
    REGION_TEXT_SCORES,
    REGIONS,
    SCORE_COLUMNS,
    STATUS,
    TEXT_EMBEDDING,
    WIDTH,
)
from pipeline.stages.rows import ok_rows, run_model, scatter, take, texts_of


def put_scores(batch: dict[str, np.ndarray], kind: str, rows: np.ndarray, scores: list[list[float]],
               has_text: list[bool]) -> None:
    """Each row's scores → the scorer's two columns: the alt-text's (first, when it has one) and the candidates'."""
    n = len(batch[STATUS])
    text_col, caps_col = SCORE_COLUMNS[kind]
    batch[text_col] = scatter(n, rows, [s[0] if has else None for s, has in zip(scores, has_text, strict=True)])
    batch[caps_col] = scatter(n, rows, [s[1:] if has else s for s, has in zip(scores, has_text, strict=True)])


class ScoreItm:
    """BLIP ITM match probability and ITC cosine for every text of ok rows."""

    def __init__(self, cfg: ItmConfig, pixels: str, storage_options: dict[str, Any] | None = None,
                 load: Callable[..., BlipItm] = load_itm):
        self.model, self.column = load(cfg, storage_options), pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, pixels = stage_pixels(batch, self.column, ok_rows(batch), self.model)
        texts, has_text = texts_of(batch, rows)

        def score(ix: np.ndarray) -> list[tuple[list[float], list[float]]]:
            itm, itc = self.model.score(take(pixels, ix), [texts[j] for j in ix])
            return list(zip(itm, itc, strict=True))

        kept, results = run_model(batch, rows, score)
        done = set(kept)
        has_text = [h for r, h in zip(rows, has_text, strict=True) if r in done]
        put_scores(batch, "itm", kept, [r[0] for r in results], has_text)
        put_scores(batch, "itc", kept, [r[1] for r in results], has_text)
        return batch


class ScoreClip:
    """CLIP cosine for every text of ok rows; with `embed`, also the image and alt-text embeddings; with
    `curate`, the curation heads' scores on the same image embeddings (models/heads.py), which `keep`
    honours where the config thresholds them (curate_pass)."""

    score = True

    def __init__(self, cfg: ClipConfig, pixels: str, storage_options: dict[str, Any] | None = None,
                 embed: EmbedConfig | None = None, load: Callable[..., ClipEmbedder] = load_clip,
                 curate: CurateConfig | None = None, score: bool | None = None):
        from pipeline.models.heads import load_heads

        self.model, self.column, self.embed = load(cfg, storage_options), pixels, embed
        if score is not None:
            self.score = score
        self.curate = curate or CurateConfig()
        self.heads = {c: h.to(self.model.device) for c, h in load_heads(self.curate, storage_options).items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[STATUS])
        rows, pixels = stage_pixels(batch, self.column, ok_rows(batch), self.model)
        texts, has_text = texts_of(batch, rows)
        kept, results = run_model(batch, rows, lambda ix: self._rows(take(pixels, ix), [texts[j] for j in ix],
                                                                    [has_text[j] for j in ix]))
        has = {r: h for r, h in zip(rows, has_text, strict=True)}
        for j, column in enumerate(self.heads):
            batch[column] = scatter(n, kept, [r[3][j] for r in results])
        if self.score:
            put_scores(batch, "clip", kept, [r[0] for r in results], [has[r] for r in kept])
        if self.embed is not None:
            batch[IMAGE_EMBEDDING] = scatter(n, kept, [r[1] for r in results])
            if self.embed.text:
                alt = [j for j, r in enumerate(results) if r[2] is not None]
                batch[TEXT_EMBEDDING] = scatter(n, kept[alt], [results[j][2] for j in alt])
        if getattr(self.model, "alpha", False):
            self._regions(batch, kept, rows, pixels, texts, has_text)
        return batch

    def _regions(self, batch: dict[str, np.ndarray], kept: np.ndarray, rows: np.ndarray, pixels: Any,
                 texts: list[list[str]], has_text: list[bool]) -> None:
        """Alpha-CLIP: each region of a kept row (decode/regions.py) as the alpha channel of its image →
        an embedding per region, and every text's score against each region ([region][candidate])."""
        n = len(batch[STATUS])
        pos = {r: j for j, r in enumerate(rows)}  # a row → its place in `pixels` and `texts`
        target = processor_size_target(self.model.image_processor, self.column)
        with_regions = np.array([r for r in kept if batch[REGIONS][r]], dtype=np.int64)
        maps = [row_maps(batch[REGIONS][r], batch[MASK][r] if MASK in batch else None, int(batch[WIDTH][r]),
                         int(batch[HEIGHT][r]), target) for r in with_regions]

        def run(ix: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
            import torch

            owner = np.repeat([pos[with_regions[j]] for j in ix], [len(maps[j]) for j in ix]).astype(np.int64)
            feats = self.model.region_features(take(pixels, owner), np.concatenate([maps[j] for j in ix]))
            out, start = [], 0
            for j in ix:
                f = feats[start : start + len(maps[j])]
                start += len(maps[j])
                sims = None
                if self.score:
                    with torch.inference_mode():
                        sims = (f @ self.model.text_features(texts[pos[with_regions[j]]]).T).cpu().numpy()
                out.append((f.cpu().numpy(), sims))
            return out

        done, results = run_model(batch, with_regions, run)
        if self.embed is not None:
            batch[REGION_EMBEDDINGS] = scatter(n, done, [r[0].tolist() for r in results])
        if self.score:
            alt = [has_text[pos[r]] for r in done]
            batch[REGION_TEXT_SCORES] = scatter(n, done, [r[1][:, 0].tolist() if a else None
                                                          for r, a in zip(results, alt, strict=True)])
            batch[REGION_CAPTION_SCORES] = scatter(n, done, [(r[1][:, 1:] if a else r[1]).tolist()
                                                             for r, a in zip(results, alt, strict=True)])

    def _rows(self, pixels: Any, texts: list[list[str]], has_text: list[bool]) -> list[tuple[Any, Any, Any, Any]]:
        """Per row: (its texts' similarities or None, image embedding or None, alt-text embedding or None,
        the heads' scores)."""
        import torch

        images = self.model.image_features(pixels)  # queued on the GPU: the texts are tokenised meanwhile
        heads = [h(images).cpu().numpy().tolist() for h in self.heads.values()]  # on the normalised embedding
        embed_text = self.embed is not None and self.embed.text
        # One text forward for both the scores (every text) and the alt-text embeddings (first texts).
        if self.score:
            per_row = texts
        else:
            per_row = [ts[:1] if has and embed_text else [] for ts, has in zip(texts, has_text, strict=True)]
        flat = self.model.text_features([t for ts in per_row for t in ts])
        starts = np.cumsum([0, *(len(ts) for ts in per_row)])[:-1].astype(np.int64)
        sims: list[Any] = [None] * len(per_row)
        if self.score:
            owner = torch.from_numpy(np.repeat(np.arange(len(per_row)), [len(ts) for ts in per_row])).to(images.device)
            with torch.inference_mode():
                all_sims = (flat * images[owner]).sum(-1).cpu().numpy()
            sims = [all_sims[s : s + len(ts)].tolist() for s, ts in zip(starts, per_row, strict=True)]
        image_emb: list[Any] = [None] * len(per_row)
        alt_emb: list[Any] = [None] * len(per_row)
        if self.embed is not None:
            image_emb = list(images.cpu().numpy().astype(self.embed.dtype))
            if embed_text:
                text_vectors = flat.cpu().numpy().astype(self.embed.dtype)
                alt_emb = [text_vectors[s] if has else None for s, has in zip(starts, has_text, strict=True)]
        per_head = [tuple(float(h[i]) for h in heads) for i in range(len(per_row))]
        return list(zip(sims, image_emb, alt_emb, per_head, strict=True))


def thresholded(curate: CurateConfig) -> bool:
    """Whether the config thresholds a head: then `keep` honours it (the embed job gets a `keep` column)."""
    return bool(curate.heads) and (curate.aesthetic_min is not None or curate.nsfw_max is not None)


def curate_pass(batch: dict[str, Any], curate: CurateConfig | None) -> np.ndarray | None:
    """Per row: whether its heads' scores clear the `curate` thresholds (aesthetic ≥ min, NSFW < max), a
    missing score failing; None when the config thresholds nothing. `batch`: columns as sequences."""
    if curate is None:
        return None
    checks = [(AESTHETIC_SCORE, curate.aesthetic_min, False), (NSFW_SCORE, curate.nsfw_max, True)]
    checks = [(c, t, below) for c, t, below in checks if t is not None]
    if not checks:
        return None
    n = len(batch[STATUS])
    out = np.ones(n, dtype=bool)
    for column, t, below in checks:
        scores = batch[column] if column in batch else [None] * n
        out &= np.array([s is not None and s == s and (s < t if below else s >= t) for s in scores], dtype=bool)
    return out
