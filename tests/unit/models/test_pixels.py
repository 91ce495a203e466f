"""capfilt's pixel path (uint8 → normalised tensor) on the read-only arrays Arrow blocks give: the same
values as the HF processor, and no warning from torch about a tensor over a read-only array."""

import warnings

import numpy as np
import torch
from transformers import BlipImageProcessorPil

from pipeline.models.pixels import pixel_values


def test_read_only_pixels_normalise_like_the_processor_and_warn_nothing():
    ip = BlipImageProcessorPil(size={"height": 32, "width": 32})
    arr = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    arr.setflags(write=False)  # as Ray hands a block's column over from Arrow
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" UserWarning would raise here
        got = pixel_values(ip, arr, "cpu", torch.float32)
    want = ip(images=list(arr), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
