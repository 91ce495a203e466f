"""uint8 pixels (already at the processor's size) → the model's `pixel_values`, without the processor.

The HF image processors convert every image to PIL and back and normalise in NumPy, one image at a
time: on a GPU box that is CPU time the GPU waits for. Our decode stage already resized to the
processor's size, so what is left is rescale + normalise: done here on the whole batch, on the model's
device (uint8 crosses the bus, 4× smaller than float32). On CPU the arithmetic follows the processor's
own (float64 rescale, float32 normalise), so pixel values equal the processor's bit for bit.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.decode.targets import processor_size_target

Images = Sequence[np.ndarray] | np.ndarray  # uint8 HxWx3 images: a list, or one (N, H, W, 3) array (or a GPU tensor)


def _size(ip: Any) -> tuple[int, int] | None:
    """The (height, width) the processor's own resize (and crop) produces; None if it has no fixed one."""
    try:
        t = processor_size_target(ip, "")
    except (ValueError, AttributeError):
        return None
    return None if t.dynamic else (t.height, t.width)


def pixel_values(ip: Any, pixels: Any, device: str, dtype: Any) -> Any | None:
    """A (N, 3, H, W) tensor in `dtype` on `device`, or None where the processor must do it itself.
    `pixels`: uint8 (N, H, W, 3), a NumPy array (or list), or a tensor (decoded on the GPU)."""
    import torch

    x: Any = pixels if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if str(x.dtype) not in ("uint8", "torch.uint8") or x.ndim != 4 or x.shape[-1] != 3:
        return None
    if _size(ip) != tuple(x.shape[1:3]) or getattr(ip, "do_pad", False):
        return None
    if not (getattr(ip, "do_rescale", False) and getattr(ip, "do_normalize", False)):
        return None
    mean = torch.tensor(ip.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std, dtype=torch.float32).view(1, 3, 1, 1)
    # Blocks from Arrow are read-only NumPy arrays, and torch.from_numpy warns on any tensor over one. The
    # uint8 pixels are only read, into new float tensors or the pinned staging buffer, so no tensor is
    # ever made over them: NumPy converts (CPU) or copies them into the buffer (GPU).
    if device == "cpu":
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.multiply(x, ip.rescale_factor, dtype=np.float64)).permute(0, 3, 1, 2).float()
        else:
            x = (x.cpu().permute(0, 3, 1, 2).double() * ip.rescale_factor).float()
    else:  # NHWC as it is in memory to the device, the layout change there
        x = (to_device(x, device) if isinstance(x, np.ndarray) or x.device.type == "cpu" else x)
        x = x.permute(0, 3, 1, 2).float() * ip.rescale_factor
        mean, std = mean.to(x.device), std.to(x.device)
    return ((x - mean) / std).to(dtype)


def model_pixel_values(ip: Any, pixels: Any, device: str, dtype: Any) -> Any:
    """`pixel_values` for the model on `device` in `dtype`: `pixel_values` above where it applies, else
    the HF image processor's own path (on host pixels)."""
    pv = pixel_values(ip, pixels, device, dtype)
    if pv is None:
        pv = ip(images=list(to_host(pixels)), return_tensors="pt")["pixel_values"]
    return pv.to(device, dtype)


def to_host(pixels: Any) -> Any:
    """Pixels decoded on the GPU (decode.device=cuda) as NumPy, for the HF processors' own path."""
    return pixels.cpu().numpy() if hasattr(pixels, "cpu") else pixels


# Page-locked staging buffers, by batch shape, of each thread: an actor holds two batches on two threads
# (models/turns.py), and each thread reads its results back before it stages its next batch
_LOCAL = threading.local()


def to_device(x: Any, device: str) -> Any:
    """uint8 batch (a tensor or a NumPy array) → GPU through a reused page-locked buffer: the copy runs as DMA without blocking
    the CPU, which queues the normalisation and the model's kernels meanwhile. A pageable source would
    make `non_blocking` a synchronous copy through a hidden staging buffer.

    Reusing the buffer is safe because every caller reads its results back to the CPU (which waits for
    the GPU) before it stages the next batch; the buffers are the calling thread's own."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return (torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x).to(device)
    key = tuple(x.shape)
    pinned: dict[tuple[int, ...], Any] = _LOCAL.__dict__.setdefault("pinned", {})
    buf = pinned.get(key)
    if buf is None:
        if len(pinned) >= 4:  # a run has one batch shape and a last, shorter batch per block
            pinned.clear()
        buf = pinned[key] = torch.empty(key, dtype=torch.uint8).pin_memory()
    if isinstance(x, np.ndarray):
        buf.numpy()[...] = x  # NumPy copies a read-only array in; no tensor is made over it
    else:
        buf.copy_(x)
    return buf.to(device, non_blocking=True)
