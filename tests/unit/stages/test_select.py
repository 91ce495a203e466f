import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.review.top_fraction import float_keys, kth_largest
from pipeline.schema import CAPTION, CAPTION_SCORES, CAPTIONS, KEEP, KEEP_TEXT, OK, STATUS, TEXT, TEXT_SCORE
from pipeline.stages.select import SelectCaption


def obj(*values):
    a = np.empty(len(values), dtype=object)
    a[:] = list(values)
    return a


def batch():
    """Row 0: alt-text passes both; row 1: only candidate 1 passes; row 2: nothing passes;
    row 3: no alt-text; row 4: failed decode."""
    return {
        STATUS: obj(OK, OK, OK, OK, "decode_error"),
        TEXT: obj("alt0", "alt1", "alt2", None, "alt4"),
        CAPTIONS: obj(["c00", "c01"], ["c10", "c11"], ["c20"], ["c30", "c31"], []),
        "itm_text_score": obj(0.9, 0.2, 0.1, None, None),
        "itm_caption_scores": obj([0.6, 0.95], [0.7, 0.8], [0.4], [0.55, 0.52], None),
        "clip_text_score": obj(0.3, 0.3, 0.3, None, None),
        "clip_caption_scores": obj([0.3, 0.1], [0.1, 0.3], [0.3], [0.3, 0.3], None),
    }


def test_threshold_mode_keeps_the_best_passing_text():
    cfg = load_config(None, ["clean.scorers=[itm, clip]", "clean.clip_threshold=0.25"]).clean
    out = SelectCaption(cfg)(batch())
    # row 0: c01 has the top ITM (0.95) but fails CLIP; the alt-text (0.9) passes both
    assert list(out[CAPTION]) == ["alt0", "c11", None, "c30", None]
    assert list(out[KEEP]) == [True, True, False, True, None]
    assert list(out[KEEP_TEXT]) == [True, False, False, False, None]
    assert out[TEXT_SCORE][0] == 0.9 and out[CAPTION_SCORES][1] == [0.7, 0.8]


def test_rerank_sorts_candidates_and_keeps_top_k():
    cfg = load_config(None, ["clean.scorers=[clip, itm]", "clean.rank_by=itm", "clean.mode=rerank",
                             "clean.top_k=1"]).clean
    out = SelectCaption(cfg)(batch())
    assert list(out[CAPTIONS][:4]) == [["c01"], ["c11"], ["c20"], ["c30"]]
    assert list(out[CAPTION][:4]) == ["c01", "c11", "c20", "c30"]
    assert out[CAPTION_SCORES][0] == [0.95]


def test_rerank_keeps_every_scorers_raw_scores_with_their_candidates():
    """After a rerank, the i-th raw score of every scorer (itm, itc, clip) is still the i-th candidate's."""
    b = batch()
    b["itc_text_score"] = obj(0.5, 0.5, 0.5, None, None)
    b["itc_caption_scores"] = obj([0.11, 0.12], [0.21, 0.22], [0.31], [0.41, 0.42], None)
    raw = {c: {i: dict(zip(b[CAPTIONS][i], b[c][i], strict=True)) for i in range(4)}
           for c in ("itm_caption_scores", "itc_caption_scores", "clip_caption_scores")}
    cfg = load_config(None, ["clean.scorers=[clip, itm]", "clean.rank_by=itm", "clean.mode=rerank",
                             "clean.top_k=2"]).clean
    out = SelectCaption(cfg)(b)
    assert list(out[CAPTIONS][:4]) == [["c01", "c00"], ["c11", "c10"], ["c20"], ["c30", "c31"]]
    for col, by_row in raw.items():
        for i in range(4):
            assert out[col][i] == [by_row[i][c] for c in out[CAPTIONS][i]], (col, i)
    assert out["itm_caption_scores"][0] == [0.95, 0.6] and out["clip_caption_scores"][0] == [0.1, 0.3]
    assert out["itc_caption_scores"][1] == [0.22, 0.21] and out[CAPTION_SCORES][0] == [0.95, 0.6]


def test_top_fraction_picks_the_best_text_and_leaves_flags_for_later():
    cfg = load_config(None, ["clean.mode=top_fraction"]).clean
    out = SelectCaption(cfg)(batch())
    assert list(out[CAPTION]) == ["c01", "c11", "c20", "c30", None]
    assert all(k is None for k in out[KEEP])


@pytest.mark.parametrize("k", [1, 2, 500, 999, 1000])
def test_kth_largest_is_exact_with_ties_and_negatives(k):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=900), np.full(100, 0.25), [-0.0, 0.0]]).astype(np.float32)
    got = kth_largest(lambda: iter(np.array_split(x, 9)), k)
    assert got == np.sort(x)[::-1][k - 1]


def test_float_keys_preserve_order():
    x = np.array([-np.inf, -2.5, -1e-30, 0.0, 1e-30, 0.5, 3.0, np.inf], dtype=np.float32)
    assert (np.diff(float_keys(x).astype(np.int64)) > 0).all()


def test_the_curation_thresholds_take_away_keep_whatever_the_text_scores():
    """aesthetic ≥ min and NSFW < max, a missing score failing: rows 0 and 1 pass their texts' thresholds;
    row 0 is too unsafe, row 1 fine, row 3 (no text passing... it keeps c30) not beautiful enough."""
    cfg = load_config(None, ["clean.scorers=[itm, clip]", "clean.clip_threshold=0.25", "curate.aesthetic=x.pth",
                             "curate.nsfw=y.pth", "curate.aesthetic_min=5", "curate.nsfw_max=0.5"])
    b = batch()
    b["aesthetic_score"] = obj(6.0, 5.0, 7.0, 4.9, None)
    b["nsfw_score"] = obj(0.7, 0.49, 0.1, 0.1, None)
    out = SelectCaption(cfg.clean, cfg.curate)(b)
    assert list(out[KEEP]) == [False, True, False, False, None]
    assert list(out[KEEP_TEXT]) == [False, False, False, False, None]
    assert list(out[CAPTION]) == ["alt0", "c11", None, "c30", None]  # the texts' choice is the scores'
    unthresholded = load_config(None, ["clean.scorers=[itm, clip]", "clean.clip_threshold=0.25", "curate.nsfw=y.pth"])
    assert list(SelectCaption(unthresholded.clean, unthresholded.curate)(b)[KEEP]) == [True, True, False, True, None]
