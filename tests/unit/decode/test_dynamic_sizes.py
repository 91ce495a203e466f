"""Decode targets that keep each image's aspect ratio (Qwen2-VL, SmolVLM): capfilt's size rules equal
transformers' own, the decoded pixels make the processor's resize a no-op (so its output on them equals its
output on the original image), and the decode stage carries images of different sizes in one column."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError, DecodeConfig, load_config
from pipeline.decode.geometry import Target, longest_edge_size, plan, smart_resize
from pipeline.decode.image import decode
from pipeline.decode.targets import processor_size_target
from pipeline.models.random_weights import ensure_tiny
from tests.fixtures.reference import png

SIDES = [1, 2, 3, 7, 27, 28, 29, 55, 56, 57, 100, 333, 640, 1023, 1024, 1999, 4000, 5000]


def test_smart_resize_equals_qwen2_vl_s_own():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as theirs

    for h, w in itertools.product(SIDES, SIDES):
        for args in [(28, 56 * 56, 28 * 28 * 1280), (28, 56 * 56, 112 * 112), (32, 1024, 4096 * 4)]:
            try:
                expected = theirs(h, w, *args)
            except ValueError:
                with pytest.raises(ValueError, match="aspect ratio"):
                    smart_resize(h, w, *args)
                continue
            assert smart_resize(h, w, *args) == expected, (h, w, args)


def test_longest_edge_size_equals_smolvlm_s_own():
    from transformers.models.smolvlm.image_processing_pil_smolvlm import get_resize_output_image_size

    for h, w in itertools.product(SIDES, SIDES):
        for longest in (64, 512, 1536, 5000):
            expected = get_resize_output_image_size(np.zeros((3, h, w)), resolution_max_side=longest)
            assert longest_edge_size(h, w, longest) == tuple(expected), (h, w, longest)


@pytest.mark.parametrize("name, mode", [("qwen2-vl", "pixels"), ("smolvlm", "longest")])
def test_processor_pixels_on_the_decoded_image_equal_those_on_the_original(name, mode, photos):
    """Each image decoded to its own size (the processor's first resize), then the processor: the same
    pixel_values (and grid / tiles) as the processor given the original image."""
    from transformers import AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(ensure_tiny(name))
    t = processor_size_target(ip, "p")
    assert t.mode == mode and t.dynamic
    for arr in [photos[0], photos[3][:40], photos[5][:, :23], np.ascontiguousarray(photos[7][::2, :150])]:
        data = png(arr)
        ours = decode(data, (t,), 10**8, ("PNG",), draft=False)[0]["p"]
        h, w = arr.shape[:2]
        assert ours.shape[:2] == plan(w, h, t).size[::-1]
        original = Image.open(io.BytesIO(data)).convert("RGB")
        ref = ip(images=[original], return_tensors="np")
        got = ip(images=[ours], return_tensors="np")
        assert set(ref) == set(got)
        for k in ref:
            np.testing.assert_array_equal(np.asarray(ref[k]), np.asarray(got[k]), err_msg=f"{name} {k} {arr.shape}")


def test_decode_stage_carries_images_of_different_sizes_and_bad_rows_get_their_status():
    from pipeline.schema import ERROR, IMAGE, STATUS
    from pipeline.stages.decode import DecodeImages

    t = Target("pixels_caption", 0, 0, "pixels", factor=28, min_pixels=56 * 56, max_pixels=112 * 112)
    rng = np.random.default_rng(0)
    images = [png(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 50), (90, 30), (60, 60)]]
    images.insert(1, b"not an image")
    n = len(images)
    batch = {IMAGE: np.array(images, dtype=object), STATUS: np.array(["ok"] * n, dtype=object),
             ERROR: np.array([None] * n, dtype=object)}
    out = DecodeImages(DecodeConfig(formats=("PNG",)), (t,))(batch)
    assert list(out[STATUS]) == ["ok", "unsupported_format", "ok", "ok"]
    assert [out["pixels_caption"][i].shape for i in (0, 2, 3)] == [(56, 84, 3), (112, 56, 3), (56, 56, 3)]


def test_decode_on_the_gpu_refuses_a_per_image_size_in_one_line():
    from pipeline.job import decode_stage

    t = Target("p", 0, 0, "pixels", factor=28, min_pixels=3136, max_pixels=12544)
    with pytest.raises(ConfigError, match=r"^config: decode\.device: 'cuda' decodes to one size per model, but caption"):
        decode_stage(load_config(None, ["decode.device=cuda", "caption.model=tiny:qwen2-vl"]), {"caption": t})


def test_the_decode_stage_stops_numpy_asking_for_huge_pages():
    # numpy madvises huge pages for its arrays of 4 MB and more (a block's pixel column); where the kernel
    # compacts memory for them, filling each fresh column cost more than its copy (stages/decode.py)
    import importlib

    from pipeline.stages.decode import DecodeImages

    switch = importlib.import_module("numpy._core.multiarray")._set_madvise_hugepage
    before = switch(True)
    try:
        DecodeImages(DecodeConfig(formats=("PNG",)), (Target("p", 8, 8),))
        assert switch(True) is False  # what it was: off
    finally:
        switch(before)
