"""Decoding in a child process with a capped address space: a decoder crash costs a row, not a task."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import IO, cast

from pipeline.config import DecodeConfig
from pipeline.decode.child import receive, send
from pipeline.decode.geometry import Target
from pipeline.decode.image import Result
from pipeline.schema import DECODE_CRASH

log = logging.getLogger(__name__)


class _Crashed(Exception):
    pass


class IsolatedDecoder:
    """One decoder child process per Ray worker, reused across tasks; replaced when it dies.

    PIL and libjpeg/libpng/libwebp are C: a hostile file can crash them or ask for more memory than
    the machine has. In a child with a capped address space, such an image costs one row, not a Ray
    task (which Ray would retry, crash again, and finally fail the whole job)."""

    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def _run(cls, datas: list[bytes], targets: tuple[Target, ...], cfg: DecodeConfig) -> list[Result]:
        if cls.proc is None or cls.proc.poll() is not None:
            cls.proc = subprocess.Popen([sys.executable, "-m", "pipeline.decode.child", str(cfg.max_memory_mb)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        stdin, stdout = cast(IO[bytes], cls.proc.stdin), cast(IO[bytes], cls.proc.stdout)  # PIPEs: never None
        try:
            send(stdin, (datas, targets, cfg))
            return receive(stdout)  # type: ignore[no-any-return]
        except (EOFError, BrokenPipeError, OSError):
            cls.proc.kill()
            cls.proc.wait()
            cls.proc = None
            raise _Crashed() from None

    @classmethod
    def decode(cls, datas: list[bytes], targets: tuple[Target, ...], cfg: DecodeConfig) -> list[Result]:
        """The batch in one call; if the child dies, each image on its own: twice at most for any image."""
        try:
            return cls._run(datas, targets, cfg)
        except _Crashed:
            log.warning("decoder process died on a batch of %d images; decoding them one by one", len(datas))
        out: list[Result] = []
        for data in datas:
            try:
                out += cls._run([data], targets, cfg)
            except _Crashed:
                out.append((DECODE_CRASH, "the decoder process died on this image (2 attempts)", None, None))
        return out
