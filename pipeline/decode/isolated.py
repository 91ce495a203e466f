"""Decoding in a child process with a capped address space and a per-image deadline: a decoder crash or
hang costs a row, not a task."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from typing import IO, Any, cast

import numpy as np

from pipeline.config import DecodeConfig
from pipeline.decode.child import WRAP, NoRoom, Shared, receive, send
from pipeline.decode.geometry import Target
from pipeline.decode.image import Result
from pipeline.schema import DECODE_CRASH, DECODE_TIMEOUT

log = logging.getLogger(__name__)


class IsolatedDecoder:
    """One decoder child process per Ray worker, reused across tasks; replaced when it dies or hangs.

    PIL and libjpeg/libpng/libwebp are C: a hostile file can crash them, ask for more memory than the
    machine has, or never return. In a child with a capped address space that answers image by image,
    such an image costs one row — `decode_crash` if it kills the decoder twice, `decode_timeout` if it
    takes longer than `decode.timeout_s` — not a Ray task (which Ray would retry, crash or hang again,
    and finally fail or stall the whole job)."""

    proc: subprocess.Popen[bytes] | None = None
    pixels: Shared | None = None  # the child writes pixels here
    inputs: Shared | None = None  # and reads the images' bytes from here

    @classmethod
    def _child(cls, cfg: DecodeConfig) -> subprocess.Popen[bytes]:
        if cls.pixels is None or cls.inputs is None:
            # The shared files (child.py): in memory where /dev/shm is, unlinked at once, so they live as
            # long as this worker and its child hold them, and a killed worker leaves nothing behind.
            cls.pixels, cls.inputs = Shared(cls._unlinked()), Shared(cls._unlinked())
        if cls.proc is None or cls.proc.poll() is not None:
            # Unbuffered pipes: the deadline waits on the file descriptor (select), which must hold all
            # that has not been read yet.
            fds = (cls.pixels.fd, cls.inputs.fd)
            cls.proc = subprocess.Popen([sys.executable, "-m", "pipeline.decode.child", str(cfg.max_memory_mb),
                                         *map(str, fds)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, pass_fds=fds)
        return cls.proc

    @staticmethod
    def _unlinked() -> int:
        fd, path = tempfile.mkstemp(prefix="capfilt-decode-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.unlink(path)
        return fd

    @classmethod
    def close(cls) -> None:
        if cls.proc is not None:
            cls.proc.kill()
            cls.proc.wait()
            cls.proc = None

    @classmethod
    def decode(cls, datas: list[bytes], targets: tuple[Target, ...], cfg: DecodeConfig,
               into: list[dict[str, np.ndarray]] | None = None) -> list[Result]:
        """Every image's result, in order. The images go to the child as one request and come back one by
        one; each must arrive within `decode.timeout_s`. When the child dies, the image it was on is tried
        once more in a fresh child, then becomes `decode_crash`; one it hangs on becomes `decode_timeout`
        at once (a hang costs the deadline every time).

        `into`: for each image, arrays its pixels are written into (by target name: the image's rows of
        the batch's columns); an ok result's pixels then hold only the targets not written there."""
        out: list[Result] = []
        crashed: set[int] = set()
        while len(out) < len(datas):
            i = len(out)
            proc = cls._child(cfg)
            pixels, inputs = cast(Shared, cls.pixels), cast(Shared, cls.inputs)
            try:
                try:
                    images: list[Any] = list(inputs.put_bytes(datas[i:]))
                except NoRoom:  # no room in /dev/shm: the bytes through the pipe
                    images = datas[i:]
                send(cast(IO[bytes], proc.stdin), (images, targets, cfg))
                while len(out) < len(datas):
                    message = receive(cast(IO[bytes], proc.stdout), cfg.timeout_s or None)
                    if message == WRAP:  # every earlier image's pixels are taken: the child may reuse the file
                        send(cast(IO[bytes], proc.stdin), WRAP)
                        continue
                    kind, payload, w, h, hashed, layout = message
                    if layout is not None:
                        payload = pixels.take(layout, into[len(out)] if into is not None else None)
                    out.append((kind, payload, w, h, hashed))
            except TimeoutError:
                cls.close()
                log.warning("decoder hung on an image for over decode.timeout_s=%gs; it becomes a row", cfg.timeout_s)
                out.append((DECODE_TIMEOUT, f"decoding took over decode.timeout_s={cfg.timeout_s:g}s", None, None, None))
            except (EOFError, OSError):
                cls.close()
                i = len(out)
                if i in crashed:
                    out.append((DECODE_CRASH, "the decoder process died on this image (2 attempts)", None, None, None))
                else:
                    log.warning("decoder process died on an image; trying it once more in a new one")
                    crashed.add(i)
        return out
