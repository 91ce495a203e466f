"""Two batches in a model actor at once (models/turns.py): the stages, called from two threads at the same
time as Ray Data's actor calls them with `overlap`, give each batch exactly what it gets alone — captions
from every strategy (sampling's seed included), BLIP-2's prompted tokens, ITM and CLIP scores, embeddings."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.schema import CAPTION_FLAGS, CAPTIONS, ERROR, STATUS, TEXT
from pipeline.stages.caption import CaptionImages
from pipeline.stages.embed import EmbedImages
from pipeline.stages.score import ScoreItm


def batches(photos: list[np.ndarray], size: int, k: int) -> list[dict[str, np.ndarray]]:
    from PIL import Image

    out = []
    for b in range(k):
        ims = [np.asarray(Image.fromarray(photos[(b + i) % len(photos)]).resize((size, size))) for i in range(5)]
        out.append({STATUS: np.array(["ok"] * 5, dtype=object), ERROR: np.full(5, None, dtype=object),
                    TEXT: np.array([f"alt text {b} {i}" for i in range(5)], dtype=object),
                    CAPTIONS: np.array([[f"a photo {b}", f"a picture {i}"] for i in range(5)], dtype=object),
                    "caption": np.array([f"a photo {b} {i}" for i in range(5)], dtype=object),
                    "pixels": np.stack(ims)})
    return out


def both_ways(stage, inputs: list[dict[str, np.ndarray]]) -> tuple[list, list]:
    """Each batch alone, in turn; then all at once, two threads at a time, many rounds."""
    alone = [stage({k: v.copy() for k, v in b.items()}) for b in inputs]
    together: list = [None] * len(inputs)
    barrier = threading.Barrier(1)

    def work(j: int) -> None:
        barrier.wait()
        together[j] = stage({k: v.copy() for k, v in inputs[j].items()})

    for start in range(0, len(inputs), 2):
        threads = [threading.Thread(target=work, args=(j,)) for j in range(start, min(start + 2, len(inputs)))]
        barrier = threading.Barrier(len(threads))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return alone, together


@pytest.mark.parametrize("model, overrides", [
    ("tiny:blip", ["caption.strategy=beam", "caption.num_beams=3"]),
    ("tiny:blip", ["caption.strategy=sample", "caption.num_captions=3"]),
    ("tiny:blip2-opt", ["caption.strategy=greedy", "caption.prompt=a photo of"]),
    ("tiny:florence2", ["caption.strategy=greedy"]),
])
def test_captions_from_two_threads_equal_those_of_each_batch_alone(photos, model, overrides):
    from pipeline.models.captioner import caption_target

    cfg = load_config(None, [f"caption.model={model}", "caption.device=cpu", "caption.max_new_tokens=6",
                             "caption.min_new_tokens=2", *overrides])
    target = caption_target(cfg.caption)
    stage = CaptionImages(cfg.caption, "pixels")
    alone, together = both_ways(stage, batches(photos, target.height, 6))
    for a, t in zip(alone, together, strict=True):
        assert list(a[CAPTIONS]) == list(t[CAPTIONS]) and list(a[CAPTION_FLAGS]) == list(t[CAPTION_FLAGS])


def test_scores_and_embeddings_from_two_threads_are_bit_equal(photos):
    from pipeline.models.loading import image_target

    cfg = load_config(None, ["itm.model=tiny:blip-itm", "itm.device=cpu", "clip.model=tiny:clip", "clip.device=cpu",
                             "text_embed.device=cpu"])
    itm = ScoreItm(cfg.itm, "pixels")
    alone, together = both_ways(itm, batches(photos, image_target(cfg.itm, 'pixels').height, 6))
    for a, t in zip(alone, together, strict=True):
        assert list(a["itm_text_score"]) == list(t["itm_text_score"])
        assert list(a["itm_caption_scores"]) == list(t["itm_caption_scores"])
    embed = EmbedImages(cfg.clip, "pixels")
    alone, together = both_ways(embed, batches(photos, image_target(cfg.clip, 'pixels').height, 6))
    for a, t in zip(alone, together, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a["image_embedding"], t["image_embedding"], strict=True))
        assert all(np.array_equal(x, y) for x, y in zip(a["text_embedding"], t["text_embedding"], strict=True))
