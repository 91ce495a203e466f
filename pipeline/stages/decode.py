"""DecodeImages: image bytes → uint8 pixels at each model's input size, once per image."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import numpy as np

from pipeline.config import DecodeConfig
from pipeline.image import DecodeFailure, Target, decode, gpu_decodable, inspect
from pipeline.schema import DECODE_CRASH, ERROR, GPU_DECODE, HEIGHT, IMAGE, OK, STATUS, WIDTH

log = logging.getLogger(__name__)

# (status, pixels by target | GPU-decode mark (see GPU_DECODE) | error message, width, height)
Result = tuple[str, Any, Any, Any]


def decode_many(datas: list[bytes], targets: tuple[Target, ...], cfg: DecodeConfig) -> list[Result]:
    """Each image decoded to every target; with `decode.device: cuda`, only its header checked."""
    out: list[Result] = []
    for data in datas:
        try:
            if cfg.device == "cuda":
                im, orientation, w, h = inspect(data, cfg.max_pixels, cfg.formats)
                out.append((OK, orientation if gpu_decodable(im, data) else 0, w, h))
            else:
                pixels, w, h = decode(data, targets, cfg.max_pixels, cfg.formats, cfg.draft, cfg.fast)
                out.append((OK, pixels, w, h))
        except DecodeFailure as e:
            out.append((e.kind, str(e)[:500], None, None))
    return out


class _Isolated:
    """One decoder child process per Ray worker, reused across tasks; replaced when it dies.

    PIL and libjpeg/libpng/libwebp are C: a hostile file can crash them or ask for more memory than
    the machine has. In a child with a capped address space, such an image costs one row, not a Ray
    task (which Ray would retry, crash again, and finally fail the whole job)."""

    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def run(cls, datas: list[bytes], targets: tuple[Target, ...], cfg: DecodeConfig) -> list[Result]:
        from pipeline.decoder_process import receive, send

        if cls.proc is None or cls.proc.poll() is not None:
            cls.proc = subprocess.Popen([sys.executable, "-m", "pipeline.decoder_process", str(cfg.max_memory_mb)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert cls.proc.stdin is not None and cls.proc.stdout is not None
        try:
            send(cls.proc.stdin, (datas, targets, cfg))
            return receive(cls.proc.stdout)  # type: ignore[no-any-return]
        except (EOFError, BrokenPipeError, OSError):
            cls.proc.kill()
            cls.proc.wait()
            cls.proc = None
            raise _Crashed() from None

    @classmethod
    def run_isolating(cls, datas: list[bytes], targets: tuple[Target, ...], cfg: DecodeConfig) -> list[Result]:
        """The batch in one call; if the child dies, each image on its own: twice at most for any image."""
        try:
            return cls.run(datas, targets, cfg)
        except _Crashed:
            log.warning("decoder process died on a batch of %d images; decoding them one by one", len(datas))
        out: list[Result] = []
        for data in datas:
            try:
                out += cls.run([data], targets, cfg)
            except _Crashed:
                out.append((DECODE_CRASH, "the decoder process died on this image (2 attempts)", None, None))
        return out


class _Crashed(Exception):
    pass


class DecodeImages:
    """Adds one pixel column per target, `width`/`height`; drops the bytes. Failed rows get a status.
    With `decode.device: cuda`: keeps the bytes of ok rows and adds GPU_DECODE instead of pixels."""

    def __init__(self, cfg: DecodeConfig, targets: tuple[Target, ...]):
        self.cfg, self.targets = cfg, targets

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch[STATUS])
        status = batch[STATUS].astype(object)
        error = batch[ERROR].astype(object)
        on_gpu = self.cfg.device == "cuda"
        pixels = {} if on_gpu else {t.name: np.zeros((n, t.height, t.width, 3), dtype=np.uint8) for t in self.targets}
        mark = np.zeros(n, dtype=np.int8)
        width = np.full(n, None, dtype=object)
        height = np.full(n, None, dtype=object)
        rows = [i for i in range(n) if status[i] == OK]
        datas = [batch[IMAGE][i] for i in rows]
        results: list[Result] = []
        step = self.cfg.batch_size  # images per call to the decoder (a fused read hands over whole blocks)
        for chunk in (datas[i : i + step] for i in range(0, len(datas), step)):
            if self.cfg.isolate:
                results += _Isolated.run_isolating(chunk, self.targets, self.cfg)
            else:
                results += decode_many(chunk, self.targets, self.cfg)
        for i, (kind, payload, w, h) in zip(rows, results, strict=True):
            if kind != OK:
                status[i], error[i] = kind, payload
                continue
            width[i], height[i] = w, h
            if on_gpu:
                mark[i] = payload
                continue
            for name, arr in payload.items():
                pixels[name][i] = arr
        if on_gpu:  # the model stages decode the bytes of ok rows; those of failed rows are not needed
            image = batch[IMAGE].astype(object)
            image[status != OK] = b""
            batch = {**batch, IMAGE: image, GPU_DECODE: mark}
        else:
            batch = {k: v for k, v in batch.items() if k != IMAGE}  # the heaviest column: gone after decode
        batch.update(pixels)
        batch[STATUS], batch[ERROR], batch[WIDTH], batch[HEIGHT] = status, error, width, height
        return batch
