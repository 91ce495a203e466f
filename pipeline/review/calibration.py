"""`clean.mode: keep_fraction`: a threshold calibrated on the first shards of a run, then applied as it streams.

The first `clean.calibration_shards` complete shards are held back (not committed); the threshold of
`clean.rank_by` that keeps `clean.fraction` of their scored alt-texts is computed exactly from their
scores, recorded in `OUT/_calibration.json` (written once: a resume or a second driver uses the same
threshold), and every shard, the held ones first, is committed with its keep flags and chosen caption
decided by that threshold (the other scorers keep their configured thresholds), exactly as
`mode: threshold` would decide them with it.

Error bound: on the calibration shards the kept share is exact (± ties). Over the whole run it is the
calibration sample's quantile: if the shards are alike (img2dataset's are: URLs shuffled), the share
kept of the other shards is within ±2·sqrt(f(1−f)/n) of f with 95 % probability, n the alt-texts scored
in the calibration shards (`bound` in the calibration record; `capfilt inspect` reports the share kept
over the whole output). Unlike `top_fraction` nothing is rewritten after the run.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import CleanConfig, CurateConfig
from pipeline.io.storage import get_fs, join
from pipeline.io.writer import create_once
from pipeline.schema import CAPTION, CAPTIONS, HEAD_SCORES, KEEP, KEEP_TEXT, SCORE_COLUMNS, STATUS, TEXT, TEXT_SCORE

log = logging.getLogger(__name__)
CALIBRATION = "_calibration.json"


class KeepFraction:
    """The committer's hold-and-decide hook for `mode: keep_fraction` (see ShardCommitter.calibration)."""

    def __init__(self, clean: CleanConfig, output: str, digest: str, options: dict[str, Any],
                 curate: CurateConfig | None = None):
        self.clean, self.output, self.digest, self.options, self.curate = clean, output, digest, options, curate
        self.scores: list[np.ndarray] = []
        self.sources: list[str] = []
        self.record: dict[str, Any] | None = None
        fs, path = get_fs(join(output, CALIBRATION), options)
        try:
            found = json.loads(fs.cat_file(path))
        except FileNotFoundError:
            found = None
        if found is not None and found.get("config_digest") == digest:
            self.record = found  # a resume: the threshold the earlier shards were committed with

    @property
    def needed(self) -> int:
        return self.clean.calibration_shards

    @property
    def ready(self) -> bool:
        return self.record is not None

    def offer(self, source: str, rows: pa.Table) -> None:
        """A held shard's alt-text scores (ok rows, rank_by's scorer)."""
        self.sources.append(source)
        scores = pc.drop_null(rows[TEXT_SCORE]).to_numpy(zero_copy_only=False)
        self.scores.append(np.asarray(scores, dtype=np.float32))

    def calibrate(self) -> None:
        """The threshold from the held shards, recorded once (another driver's record wins)."""
        x = np.sort(np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32))[::-1]
        f = self.clean.fraction
        k = round(f * len(x))
        threshold = float(x[k - 1]) if k >= 1 else float("inf")
        record = {"mode": "keep_fraction", "fraction": f, "rank_by": self.clean.rank_by, "threshold": threshold,
                  "shards": len(self.scores), "sources": self.sources, "scored_alt_texts": int(len(x)),
                  "kept_in_calibration": int(k),
                  "bound": 2 * math.sqrt(f * (1 - f) / len(x)) if len(x) else None, "config_digest": self.digest}
        uri = join(self.output, CALIBRATION)
        if not create_once(uri, json.dumps(record).encode(), self.options):
            fs, path = get_fs(uri, self.options)
            record = json.loads(fs.cat_file(path))
        self.record = record
        log.info("keep_fraction: %s >= %.6f keeps %d of %d alt-texts in the first %d shards (±%s over the rest)",
                 self.clean.rank_by, record["threshold"], record["kept_in_calibration"], record["scored_alt_texts"],
                 record["shards"], f"{record['bound']:.2%}" if record["bound"] is not None else "?")

    def decide(self, rows: pa.Table) -> pa.Table:
        """keep_text, keep and caption of every row by the calibrated threshold (SelectCaption's rule, the
        curation thresholds included)."""
        from pipeline.stages.select import SelectCaption

        assert self.record is not None
        cfg = replace(self.clean, mode="threshold", **{f"{self.clean.rank_by}_threshold": self.record["threshold"]})
        needed = {STATUS, TEXT, CAPTIONS, *(c for k in cfg.scorers for c in SCORE_COLUMNS[k]),
                  *SCORE_COLUMNS[cfg.rank_by], *(c for c in HEAD_SCORES if c in rows.column_names)}
        batch = {c: _objects(rows[c].to_pylist()) for c in needed}
        out = SelectCaption(cfg, self.curate)(batch)
        for col, typ in ((CAPTION, pa.string()), (KEEP, pa.bool_()), (KEEP_TEXT, pa.bool_())):
            rows = rows.set_column(rows.schema.get_field_index(col), col, pa.array(list(out[col]), typ))
        return rows


def _objects(values: list[Any]) -> np.ndarray:
    """A 1-d object array (np.array would make a 2-d one of equal-length lists)."""
    a = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        a[i] = v
    return a
