"""SelectCaption: CapFilt's decision per row, from the scores the scorers wrote.

A text passes when it clears the threshold of every configured scorer. `caption` is the best text by
`clean.rank_by` among those that pass (the alt-text included), `keep` is whether any passes. In
`top_fraction` mode the cut is global, so the flags are set after the run (see pipeline/review/top_fraction.py);
here `caption` is the best text of the row. In `rerank` mode (LAION-COCO), candidates are sorted by
score and the best `top_k` kept; every ok row is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import CleanConfig, CurateConfig
from pipeline.schema import (
    CAPTION,
    CAPTION_FLAGS,
    CAPTION_SCORES,
    CAPTIONS,
    KEEP,
    KEEP_TEXT,
    OK,
    SCORE_COLUMNS,
    STATUS,
    TEXT,
    TEXT_SCORE,
)
from pipeline.stages.score import curate_pass


class SelectCaption:
    """`curate`: a row whose curation scores miss its thresholds (aesthetic ≥ min, NSFW < max) is not kept,
    nor its alt-text, whatever its texts' scores."""

    def __init__(self, cfg: CleanConfig, curate: CurateConfig | None = None):
        self.cfg, self.curate = cfg, curate
        self.thresholds = {"itm": cfg.itm_threshold, "clip": cfg.clip_threshold}

    def _passes(self, batch: dict[str, np.ndarray], i: Any, j: int | None) -> bool:
        """Does text j of row i (None: the alt-text) clear every scorer's threshold?"""
        for kind in self.cfg.scorers:
            text_col, caps_col = SCORE_COLUMNS[kind]
            s = batch[text_col][i] if j is None else batch[caps_col][i][j]
            if s is None or s < self.thresholds[kind]:
                return False
        return True

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[STATUS])
        text_col, caps_col = SCORE_COLUMNS[self.cfg.rank_by]
        out = {c: np.full(n, None, dtype=object) for c in (CAPTION, TEXT_SCORE, CAPTION_SCORES, KEEP_TEXT, KEEP)}
        captions = batch[CAPTIONS].copy()
        flags = batch[CAPTION_FLAGS].copy() if CAPTION_FLAGS in batch else None
        raw = {caps: batch[caps].copy() for _, caps in SCORE_COLUMNS.values() if caps in batch}
        for i in np.flatnonzero(batch[STATUS] == OK):
            cands = list(captions[i] or [])
            cand_scores = list(batch[caps_col][i] or [])
            text_score = batch[text_col][i]
            mode = self.cfg.mode
            if mode == "rerank":
                order = sorted(range(len(cands)), key=lambda j: -cand_scores[j])[: self.cfg.top_k]
                cands, cand_scores = [cands[j] for j in order], [cand_scores[j] for j in order]
                captions[i] = cands
                if flags is not None and flags[i] is not None:  # each candidate's flags follow it
                    flags[i] = [flags[i][j] for j in order]
                for col in raw:  # every scorer's raw scores follow their candidates
                    if raw[col][i] is not None:
                        raw[col][i] = [raw[col][i][j] for j in order]
                out[CAPTION][i] = cands[0] if cands else None
                out[KEEP][i] = bool(cands)
                out[KEEP_TEXT][i] = text_score is not None and self._passes(batch, i, None)
            else:
                # (score, text, passes) for the alt-text and each candidate
                options = [(text_score, batch[TEXT][i], self._passes(batch, i, None))] if text_score is not None else []
                options += [(s, c, self._passes(batch, i, j)) for j, (s, c) in enumerate(zip(cand_scores, cands, strict=True))]
                if mode in ("threshold", "keep_fraction"):  # keep_fraction: the driver decides again at commit
                    passing = [o for o in options if o[2]]
                    out[KEEP_TEXT][i] = bool(options) and text_score is not None and options[0][2]
                    out[KEEP][i] = bool(passing)
                    out[CAPTION][i] = max(passing, key=lambda o: o[0])[1] if passing else None
                else:  # top_fraction: the best text; flags come after the run, from the global cut
                    out[CAPTION][i] = max(options, key=lambda o: o[0])[1] if options else None
            out[TEXT_SCORE][i] = text_score
            out[CAPTION_SCORES][i] = cand_scores
        if (passes := curate_pass(batch, self.curate)) is not None:
            for col in (KEEP, KEEP_TEXT):
                out[col] = np.array([k and bool(p) if k is not None else None for k, p in zip(out[col], passes, strict=True)],
                                    dtype=object)
        batch.update(out)
        batch.update(raw)
        batch[CAPTIONS] = captions
        if flags is not None:
            batch[CAPTION_FLAGS] = flags
        return batch
