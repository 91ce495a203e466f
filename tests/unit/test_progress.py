"""The progress line: images, img/s, ETA and the busiest stage, from the stage seconds blocks carry."""

import io

import numpy as np
import pyarrow as pa

from pipeline.progress import Progress, stage_seconds
from pipeline.ray_adapter import _on_arrow
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
