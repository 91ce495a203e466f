"""CUDA-only paths: run on a GPU machine (`pytest -m gpu`), skipped elsewhere."""

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.models.captioner import load_captioner
from pipeline.models.pixels import _PINNED, pixel_values

pytestmark = pytest.mark.gpu


def test_pixels_staged_through_pinned_memory_equal_the_cpu_path():
    import torch
    from transformers import BlipImageProcessorPil

    ip = BlipImageProcessorPil(size={"height": 64, "width": 64})
    arr = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    cpu = pixel_values(ip, arr, "cpu", torch.float32)
    gpu = pixel_values(ip, arr, "cuda", torch.float32)
    assert gpu.device.type == "cuda" and _PINNED[(5, 64, 64, 3)].is_pinned()
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
    again = pixel_values(ip, arr[::-1].copy(), "cuda", torch.float32)  # the buffer is reused, not stale
    torch.testing.assert_close(again.cpu(), cpu.flip(0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_captions_on_cuda_match_the_cpu_in_float32(cache):
    cfg = ["caption.model=tiny:blip2-opt", "caption.strategy=greedy", "caption.max_new_tokens=6",
           "caption.min_new_tokens=3", "caption.dtype=float32", f"caption.cache={cache}"]
    arr = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    on_gpu = load_captioner(load_config(None, [*cfg, "caption.device=cuda"]).caption).caption(arr)
    on_cpu = load_captioner(load_config(None, [*cfg, "caption.device=cpu"]).caption).caption(arr)
    assert on_gpu == on_cpu
