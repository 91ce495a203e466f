"""`capfilt estimate`'s projection from a sample's figures (the sample run itself is faked here; the CLI test
runs a real one)."""

from __future__ import annotations

import pytest

from jobs.caption import JOB
from pipeline.config import load_config
from pipeline.job import build_job
from pipeline.runner import estimate as est
from pipeline.runner.report import Summary
from tests.fixtures.paths import CONFIGS
from tests.fixtures.samples import write_parquet


def test_a_sample_whose_decode_ran_ahead_is_projected_at_the_bottlenecks_capacity(monkeypatch, tmp_path):
    """Decode ran ahead while the model loaded: its blocks drained at once after the first, so the rate after
    the first block (133.6 img/s) is above what the caption stage can do (64 rows in 0.84 busy-seconds:
    76.4 img/s). The whole run goes at the bottleneck's pace, not the sample's."""
    write_parquet(tmp_path / "in" / "a.parquet", 800, size=16)
    cfg = load_config(str(CONFIGS / "tiny.yaml"), ["run.progress=none"], defaults=JOB.defaults)
    job = build_job(JOB, cfg)
    summary = Summary("x", 64, {"ok": 64}, 1, 0, seconds=6.0, first_block_s=5.5,
                      stages={"ReadShards->MapBatches(DecodeImages)": {"busy_s": 0.2},
                              "MapBatches(CaptionImages)": {"busy_s": 64 / 76.4}},
                      extra={"timing": {"after_first_block_img_s": 133.6}})
    monkeypatch.setattr("pipeline.runner.run.run_job", lambda *a, **k: summary)
    d = est.estimate(job, [str(tmp_path / "in" / "*.parquet")], cfg, 64)
    assert d["bottleneck"] == "MapBatches(CaptionImages)"
    assert d["as_sampled"]["img_s"] == pytest.approx(76.4)
    assert d["as_sampled"]["wall_s"] == pytest.approx(5.5 + 800 / 76.4)
    # a sample slower than every stage's capacity (start-up, queues) keeps its own rate
    summary.extra["timing"]["after_first_block_img_s"] = 50.0
    assert est.estimate(job, [str(tmp_path / "in" / "*.parquet")], cfg, 64)["as_sampled"]["img_s"] == 50.0
