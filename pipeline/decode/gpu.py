"""`decode.device: cuda`: JPEG bytes → uint8 pixels at a model's input size, on the model's GPU.

The CPU tasks only check headers (format, max_pixels, EXIF orientation; see DecodeImages) and pass the
bytes on; each model's actor decodes them here. nvJPEG, through `torchvision.io.decode_jpeg` on a list
(one batched call), decodes at full size; the EXIF orientation read by the CPU stage is applied; the
resize is torch's antialiased bicubic, the filter of the processor path (PIL), and the resize/crop plan
and the orientation table are the CPU path's (geometry.py). Images nvJPEG refuses, and other formats,
decode on the CPU (the fast path, in the isolated decoder child), so a bad file is still a row with a
status, never a failed batch.

Why not Ray Data's or torchvision's transforms: they work on one image tensor of one size at a time on
the CPU; web images come in every size, and the point is to keep the CPU out of the pixel path.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pipeline.config import DecodeConfig
from pipeline.decode.geometry import ORIENTATION_TRANSPOSE, Target, plan
from pipeline.decode.isolated import IsolatedDecoder
from pipeline.decode.targets import processor_size_target
from pipeline.schema import ERROR, GPU_DECODE, IMAGE, OK, STATUS

CHUNK = 64  # images per nvJPEG call: the full-size frames of 64 web images are ~0.5 GB of GPU memory
# The CPU fallback: the user's format and pixel limits were already applied to the header upstream.
CPU_FALLBACK = DecodeConfig(max_pixels=10**12, device="cpu")
_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resample → torch (LANCZOS and others: bicubic)


def stage_pixels(batch: dict[str, np.ndarray], column: str, rows: np.ndarray, model: Any) -> tuple[np.ndarray, Any]:
    """The pixels of `rows` for a model stage → (rows that have them, pixels): the decode stage's
    column, or, with decode.device=cuda, the rows' bytes decoded on the model's device. Rows whose
    image fails to decode get their status and error here and are left out."""
    if column in batch:
        col = batch[column]
        # All rows ok (the usual batch): the column itself, not a fancy-indexed copy of every pixel.
        return rows, col if len(rows) == len(col) else col[rows]
    if not len(rows):
        return rows, np.zeros((0, 0, 0, 3), np.uint8)
    target = processor_size_target(model.image_processor, column)
    pixels, failed = decode_on_device([batch[IMAGE][i] for i in rows], [int(batch[GPU_DECODE][i]) for i in rows],
                                      target, model.device)
    if failed:
        batch[STATUS], batch[ERROR] = batch[STATUS].astype(object), batch[ERROR].astype(object)
        for j, (kind, message) in failed.items():
            batch[STATUS][rows[j]], batch[ERROR][rows[j]] = kind, message
    return np.array([r for j, r in enumerate(rows) if j not in failed], dtype=np.int64), pixels


def decode_on_device(datas: list[bytes], marks: list[int], target: Target, device: str) -> tuple[Any, dict[int, tuple[str, str]]]:
    """→ ((n_ok, H, W, 3) uint8 on `device`, {index: (status, error)} of the images that failed).
    `marks[i]`: 1–8 a JPEG for nvJPEG with that EXIF orientation, 0 the CPU."""
    import torch

    out: list[Any] = [None] * len(datas)
    gpu = [j for j, m in enumerate(marks) if m > 0]
    for start in range(0, len(gpu), CHUNK):
        chunk = gpu[start : start + CHUNK]
        for j, frame in zip(chunk, nvjpeg([datas[j] for j in chunk], device), strict=True):
            if frame is not None:
                out[j] = resize_on_device(orient(frame, marks[j]), target)
    failed: dict[int, tuple[str, str]] = {}
    cpu = [j for j, o in enumerate(out) if o is None]
    if cpu:
        for j, (kind, payload, _, _, _) in zip(cpu, IsolatedDecoder.decode([datas[j] for j in cpu], (target,), CPU_FALLBACK),
                                            strict=True):
            if kind == OK:
                out[j] = torch.from_numpy(payload[target.name].copy()).to(device)  # unpickled: read-only
            else:
                failed[j] = (kind, payload)
    good = [o for o in out if o is not None]
    if not good:
        return torch.zeros((0, target.height, target.width, 3), dtype=torch.uint8, device=device), failed
    return torch.stack(good), failed


def nvjpeg(datas: list[bytes], device: str) -> list[Any]:
    """Full-size (3, H, W) uint8 frames, one batched nvJPEG call; None for an image it refuses (a
    refused batch is retried image by image to find which)."""
    import torch

    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as e:
        raise RuntimeError("decode.device: 'cuda' needs torchvision (torchvision.io.decode_jpeg); "
                           "install the torchvision that matches your torch, or set decode.device: cpu") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffers: decode_jpeg never writes its input
        tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in datas]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        if len(tensors) == 1:
            return [None]
    frames: list[Any] = []
    for t in tensors:
        try:
            frames.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            frames.append(None)
    return frames


def _transpose(frame: Any, name: str) -> Any:
    """One of PIL's Image.Transpose operations on a (3, H, W) tensor."""
    import torch

    if name == "FLIP_LEFT_RIGHT":
        return frame.flip(2)
    if name == "FLIP_TOP_BOTTOM":
        return frame.flip(1)
    if name == "ROTATE_180":
        return frame.flip(1, 2)
    if name == "TRANSPOSE":
        return frame.transpose(1, 2)
    if name == "TRANSVERSE":
        return frame.transpose(1, 2).flip(1, 2)
    if name == "ROTATE_90":  # counter-clockwise, as PIL's
        return torch.rot90(frame, 1, (1, 2))
    if name == "ROTATE_270":
        return torch.rot90(frame, -1, (1, 2))
    raise ValueError(f"unknown transpose {name!r}")


def orient(frame: Any, orientation: int) -> Any:
    """(3, H, W) → the image as a viewer shows it, for EXIF orientation 1–8 (geometry.ORIENTATION_TRANSPOSE)."""
    name = ORIENTATION_TRANSPOSE.get(orientation)
    return _transpose(frame, name) if name else frame


def resize_on_device(frame: Any, t: Target) -> Any:
    """(3, H, W) uint8 → (t.height, t.width, 3) uint8, resized and cropped by the plan `image.resize_to` follows."""
    import torch
    from torch.nn.functional import interpolate

    _, h, w = frame.shape
    p = plan(w, h, t)
    if p.precrop is not None:
        left, top, right, bottom = p.precrop
        frame = frame[:, top:bottom, left:right]
    nw, nh = p.size
    mode = _MODES.get(t.resample, "bicubic")
    x = frame.unsqueeze(0).float()
    if tuple(x.shape[2:]) != (nh, nw):
        x = interpolate(x, size=(nh, nw), mode=mode, antialias=mode != "nearest",
                        align_corners=None if mode == "nearest" else False)
    left, top, right, bottom = p.crop
    x = x[0, :, top:bottom, left:right]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
