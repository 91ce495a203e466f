"""Score sketches: exact for small shards, a stated rank error for large ones, merged over shards."""

import math

import numpy as np
import pyarrow as pa
import pytest

from pipeline.review.sketch import POINTS, Merged, file_metadata, sketch, table_sketches, with_sketches


def test_small_shards_are_exact_quantiles_and_thresholds():
    rng = np.random.default_rng(0)
    shards = [rng.random(n).astype(np.float32) for n in (7, 300, 999)]
    m = Merged.of(sketch(s.astype(np.float64)) for s in shards)
    every = np.concatenate(shards).astype(np.float64)
    assert m.n == len(every) and m.error_rows == 0
    for q in (0, 0.1, 0.25, 0.5, 0.9, 1):
        assert m.quantile(q) == np.quantile(every, q, method="inverted_cdf")
    for keep in (0.01, 0.3, 0.5, 0.99):
        t = m.threshold_for(keep)
        assert (every >= t).sum() == round(keep * len(every)) == m.at_least(t)


def test_large_shards_stay_within_the_stated_error():
    rng = np.random.default_rng(1)
    shards = [rng.normal(size=n).astype(np.float32).astype(np.float64) for n in (5_000, 20_000, 800)]
    sketches = [sketch(s) for s in shards]
    assert [len(s["points"]) for s in sketches] == [POINTS, POINTS, 800]
    m = Merged.of(sketches)
    every = np.concatenate(shards)
    assert m.error_rows == math.ceil(5_000 / POINTS) + math.ceil(20_000 / POINTS)
    for keep in (0.05, 0.3, 0.7):
        t = m.threshold_for(keep)
        assert abs((every >= t).sum() - keep * len(every)) <= m.error_rows + 1
    for t in (-1.0, 0.0, 0.5):
        assert abs(m.at_least(t) - (every >= t).sum()) <= m.error_rows


def test_list_columns_count_every_candidate_and_nulls_are_left_out():
    t = pa.table({"text_score": pa.array([0.5, None, 0.25], pa.float32()),
                  "caption_scores": pa.array([[0.1, 0.2], None, [0.3]], pa.list_(pa.float32())),
                  "other": [1, 2, 3]})
    s = table_sketches(t)
    assert set(s) == {"text_score", "caption_scores"}
    assert s["text_score"] == {"n": 2, "points": [0.25, 0.5]}
    assert s["caption_scores"]["n"] == 3
    schema = with_sketches(t.schema, s, "run-1")
    assert file_metadata(schema) == {"run_id": "run-1", "sketches": s} and file_metadata(t.schema) is None


def test_empty_sketches_answer_none():
    m = Merged.of([sketch(np.zeros(0))])
    assert m.n == 0 and m.threshold_for(0.3) is None and m.quantile(0.5) is None


@pytest.mark.parametrize("value", [0.1, 1 / 3, 1e-8, -0.7071067])
def test_a_float32_score_comes_back_exactly(value):
    x = np.float32(value)
    m = Merged.of([sketch(np.array([x], dtype=np.float64))])
    assert m.quantile(0.5) == float(x) and m.at_least(float(x)) == 1
