"""A model that fails on some rows costs those rows, as rows with a status; the others go on."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import load_config
from pipeline.schema import CAPTION, CAPTIONS, ERROR, MODEL_ERROR, MODEL_OOM, OK, STATUS, TEXT
from pipeline.stages.caption import CaptionImages
from pipeline.stages.score import ScoreItm

POISON = 255  # a pixel value the fake models below refuse


def batch(n: int, poison: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    pixels = np.zeros((n, 4, 4, 3), np.uint8)
    pixels[:, 0, 0, 0] = np.arange(n)
    for i in poison:
        pixels[i, 0, 0, 0] = POISON
    return {STATUS: np.array([OK] * n, dtype=object), ERROR: np.full(n, None, dtype=object),
            TEXT: np.array([f"alt {i}" for i in range(n)], dtype=object), "pixels_caption": pixels, "pixels_itm": pixels}


class FakeCaptioner:
    def __init__(self, error: Exception, transient: int = 0):
        self.error, self.transient, self.calls = error, transient, []

    def caption(self, pixels):
        self.calls.append(len(pixels))
        if self.transient:
            self.transient -= 1
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if (pixels[:, 0, 0, 0] == POISON).any():
            raise self.error
        return [[f"c{int(p[0, 0, 0])}"] for p in pixels]


def caption_stage(model: FakeCaptioner) -> CaptionImages:
    return CaptionImages(load_config(None, ["caption.model=tiny:blip"]).caption, load=lambda *a: model)


def test_a_row_that_raises_is_a_model_error_and_the_others_are_captioned():
    model = FakeCaptioner(ValueError("index out of range in self"))
    out = caption_stage(model)(batch(8, poison=(5,)))
    assert list(out[STATUS]) == [OK] * 5 + [MODEL_ERROR] + [OK] * 2
    assert out[ERROR][5] == "ValueError: index out of range in self" and out[CAPTION][5] is None
    assert out[CAPTIONS][5] == [] and [out[CAPTION][i] for i in (0, 4, 7)] == ["c0", "c4", "c7"]
    assert model.calls[:2] == [8, 8]  # the batch, then once more whole, then halves down to the row


def test_a_transient_failure_of_a_whole_batch_is_run_once_more():
    model = FakeCaptioner(ValueError("never"), transient=1)
    out = caption_stage(model)(batch(4))
    assert list(out[STATUS]) == [OK] * 4 and model.calls == [4, 4]


def test_a_single_row_that_does_not_fit_is_model_oom():
    model = FakeCaptioner(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB"))
    out = caption_stage(model)(batch(4, poison=(2,)))
    assert list(out[STATUS]) == [OK, OK, MODEL_OOM, OK]
    assert out[ERROR][2].startswith("OutOfMemoryError: CUDA out of memory")


def test_a_scorer_that_raises_on_one_rows_texts():
    class FakeItm:
        def score(self, pixels, texts):
            if any("alt 3" in t for ts in texts for t in ts):
                raise RuntimeError("The size of tensor a (600) must match the size of tensor b (512)")
            return [[0.9] * len(ts) for ts in texts], [[0.1] * len(ts) for ts in texts]

    cfg = load_config(None, ["itm.model=tiny:blip-itm"]).itm
    out = ScoreItm(cfg, "pixels_itm", load=lambda *a: FakeItm())(batch(6))
    assert list(out[STATUS]) == [OK, OK, OK, MODEL_ERROR, OK, OK]
    assert out["itm_text_score"][3] is None and out["itm_text_score"][4] == 0.9 and out["itc_text_score"][0] == 0.1
