"""The progress line: images, img/s, ETA and the busiest stage, from the stage seconds blocks carry."""

import io

import numpy as np
import pyarrow as pa

from pipeline.runner.progress import Progress, stage_seconds
from pipeline.runner.ray_adapter import _on_arrow
from pipeline.schema import BUSY, KEY, STATUS


class Slow:
    """A stage that takes a known time per row."""

    def __init__(self, per_row: float):
        self.per_row = per_row

    def __call__(self, batch):
        import time

        time.sleep(self.per_row * len(batch[KEY]))
        return batch


def test_stage_seconds_travel_with_the_rows_and_sum_across_stages():
    first = type("Decode", (Slow,), {})
    second = type("Caption", (Slow,), {})
    table = pa.table({KEY: [f"k{i}" for i in range(4)], STATUS: ["ok"] * 4})
    out = _on_arrow(first)(0.01)(table)
    assert out[BUSY].to_pylist()[1:] == [None] * 3 and set(out.column_names) == {KEY, STATUS, BUSY}
    # re-batched by Ray: two halves through the next stage, each carrying what it got
    halves = [_on_arrow(second, [KEY, STATUS, BUSY])(0.02)(out.slice(i, 2)) for i in (0, 2)]
    got = [stage_seconds(h) for h in halves]
    assert got[0]["Decode"] >= 0.04 and "Decode" not in got[1]  # the first row's seconds, counted once
    assert all(g["Caption"] >= 0.04 for g in got)
    assert all(h.column_names == [KEY, STATUS, BUSY] for h in halves)


def test_the_line_names_the_busiest_stage():
    p = Progress(4, mode="log", stream=io.StringIO())
    assert "busiest" not in p.line()
    p.update(10, 1, {"DecodeImages": 1.0, "CaptionImages": 3.0})
    p.update(10, 2, {"CaptionImages": 4.0})
    assert p.line().startswith("20 images | 2/4 shards | ") and p.line().endswith("| busiest CaptionImages 88%")
    assert stage_seconds(pa.table({KEY: ["a"]})) == {} and np.isclose(sum(p.busy.values()), 8.0)


class Clock:
    """time.monotonic for Progress, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _feed(p, clock, blocks):
    """(seconds since the last block, rows, shards done) per block."""
    for dt, rows, shards in blocks:
        clock.now += dt
        p.update(rows, shards)


def test_a_run_shorter_than_the_window_has_no_steady_rate_and_no_eta(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("pipeline.runner.progress.time.monotonic", clock)
    p = Progress(16, mode="log", stream=io.StringIO(), window_s=10.0)
    assert p.line().startswith("starting")
    # 12 s to the first block (start-up), then four blocks in 3 s: a 20-s run of 1 of 16 shards
    _feed(p, clock, [(12.0, 25, 0), (1.0, 25, 1), (1.0, 25, 1), (1.0, 25, 1)])
    assert p.steady_rate() is None and p.eta() is None
    assert "steady rate n/a yet | ETA n/a" in p.line()
    assert "img/s" not in p.line()


def test_the_steady_rate_is_rows_after_the_first_block_over_the_time_since(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("pipeline.runner.progress.time.monotonic", clock)
    p = Progress(10, mode="log", stream=io.StringIO(), window_s=10.0)
    # start-up 15 s (not counted), then 100 rows every 2 s, with jitter; a shard every 2 blocks
    rng = np.random.default_rng(0)
    blocks = [(15.0, 100, 0)] + [(2.0 + rng.uniform(-0.5, 0.5), 100, (i + 1) // 2) for i in range(12)]
    _feed(p, clock, blocks)
    after = sum(b[1] for b in blocks[1:])
    span = sum(b[0] for b in blocks[1:])
    rate = p.steady_rate()
    assert rate is not None and abs(rate / (after / span) - 1) <= 0.2
    assert abs(p.rows / (clock.now - (1000.0)) - rate) > 5  # the whole run's rate (start-up in it) is another figure
    eta = p.eta()
    assert eta is not None and abs(eta - (p.rows / p.shards_done * 10 - p.rows) / rate) < 1e-6
    assert f"| {rate:.1f} img/s | ETA " in p.line()
