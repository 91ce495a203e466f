"""Captioner and stages on hand-built batches (no Ray); parity with the plain transformers code."""

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.config import load_config
from pipeline.models.captioner import caption_target, load_captioner
from pipeline.schema import CAPTION, CAPTIONS, DECODE_ERROR, ERROR, HEIGHT, IMAGE, OK, STATUS, WIDTH
from pipeline.stages.caption import CaptionImages
from pipeline.stages.decode import DecodeImages
from tests.fixtures.reference import png, reference_captions


def pipeline_batch(cfg, datas):
    n = len(datas)
    batch = {STATUS: np.array([OK] * n, dtype=object), ERROR: np.full(n, None, dtype=object),
             IMAGE: np.array(datas, dtype=object)}
    batch = DecodeImages(cfg.decode, (caption_target(cfg.caption),))(batch)
    return CaptionImages(cfg.caption)(batch)


@pytest.mark.parametrize("strategy, gen", [
    ("greedy", dict(num_beams=1, do_sample=False)),
    ("beam", dict(num_beams=3, do_sample=False)),
])
def test_parity_with_plain_transformers(tiny_blip, photos, strategy, gen):
    cfg = load_config(None, ["caption.model=tiny:blip", f"caption.strategy={strategy}", "decode.draft=false", "decode.fast=false",
                             "caption.max_new_tokens=8", "caption.min_new_tokens=3"])
    datas = [png(p) for p in photos[:6]]
    ref = reference_captions(tiny_blip, [Image.open(io.BytesIO(d)).convert("RGB") for d in datas],
                             max_new_tokens=8, min_new_tokens=3, **gen)
    out = pipeline_batch(cfg, datas)
    assert list(out[CAPTION]) == ref
    assert len(set(ref)) > 1, "tiny model should caption different images differently"


def test_prompt_conditional_captioning(tiny_blip, photos):
    cfg = load_config(None, ["caption.model=tiny:blip", "caption.strategy=greedy", "decode.draft=false", "decode.fast=false",
                             "caption.prompt=a photography of", "caption.max_new_tokens=6"])
    datas = [png(p) for p in photos[:3]]
    ref = reference_captions(tiny_blip, [Image.open(io.BytesIO(d)).convert("RGB") for d in datas],
                             prompt="a photography of", max_new_tokens=6, min_new_tokens=5)
    out = pipeline_batch(cfg, datas)
    assert list(out[CAPTION]) == ref
    assert all(c.startswith("a photography of") for c in out[CAPTION])


def test_sampling_gives_n_seeded_candidates(tiny_blip, photos):
    cfg = load_config(None, ["caption.model=tiny:blip", "caption.strategy=sample", "caption.num_captions=4",
                             "caption.max_new_tokens=6", "caption.seed=7"])
    cap = load_captioner(cfg.caption)
    pixels = np.stack([np.asarray(Image.fromarray(p).resize((64, 64), Image.BICUBIC)) for p in photos[:2]])
    a, b = cap.caption(pixels), cap.caption(pixels)
    assert a == b  # same seed, same batch → same candidates
    assert all(len(c) == 4 for c in a)
    assert len(set(a[0])) > 1  # nucleus sampling gives different candidates


def test_beam_candidates_are_the_top_beams(tiny_blip, photos):
    cfg = load_config(None, ["caption.model=tiny:blip", "caption.num_beams=4", "caption.num_captions=3",
                             "caption.max_new_tokens=6"])
    pixels = np.stack([np.asarray(Image.fromarray(p).resize((64, 64), Image.BICUBIC)) for p in photos[:2]])
    out = load_captioner(cfg.caption).caption(pixels)
    assert [len(c) for c in out] == [3, 3]


def test_failed_rows_pass_through_untouched(tiny_blip, photos):
    cfg = load_config(None, ["caption.model=tiny:blip", "caption.max_new_tokens=4"])
    out = pipeline_batch(cfg, [png(photos[0]), b"not an image", png(photos[1])[:100]])
    assert list(out[STATUS]) == [OK, "unsupported_format", DECODE_ERROR]
    assert out[CAPTION][0] and out[CAPTION][1] is None and out[CAPTION][2] is None
    assert out[CAPTIONS][1] == [] and out[ERROR][0] is None and out[ERROR][1]
    assert out[WIDTH][0] == photos[0].shape[1] and out[HEIGHT][1] is None
    assert IMAGE not in out  # bytes are dropped after decode


def test_unsupported_model_type_is_a_clear_error(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    cfg = load_config(None, [f"caption.model={tmp_path}"])
    with pytest.raises(ValueError, match="model_type 'bert' is not a supported captioner"):
        load_captioner(cfg.caption)


def test_a_batch_that_runs_out_of_gpu_memory_is_split_not_failed():
    import torch

    from pipeline.models.oom import split_on_oom

    calls = []

    class FakeCaptioner:
        def caption(self, pixels):
            calls.append(len(pixels))
            if len(pixels) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return [[f"c{int(p[0, 0, 0])}"] for p in pixels]

    cfg = load_config(None, ["caption.model=tiny:blip"]).caption
    stage = CaptionImages(cfg, load=lambda *a: FakeCaptioner())
    n = 7
    pixels = np.zeros((n, 4, 4, 3), np.uint8)
    pixels[:, 0, 0, 0] = np.arange(n)
    batch = {STATUS: np.array([OK] * n, dtype=object), "pixels_caption": pixels}
    out = stage(batch)
    assert list(out[CAPTION]) == [f"c{i}" for i in range(n)]
    assert calls[0] == 7 and sum(c for c in calls if c <= 2) == 7  # every image captioned once, in halves
    with pytest.raises(ValueError):
        split_on_oom(lambda items: (_ for _ in ()).throw(ValueError("not an OOM")), [1, 2, 3])
