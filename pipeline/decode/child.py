"""A decoder child process: reads pickled (images, targets, config) requests on stdin and writes one
result per image, as each is decoded, so that its parent can hold every image to a deadline.

Neither the images' bytes nor their pixels go through the pipe: both sit in shared files (`Shared`: an
unlinked file in /dev/shm that parent and child both map), the request names where each image's bytes
are, and a result says where its pixels are (name → dtype, shape, offset) with the small rest of it.
Pickled through the pipe, a web JPEG and its 224×224 pixels cost the parent ~0.3 ms an image of copies
and of the two processes waking each other for each 64 KiB the pipe holds, and the child as much again.

Where a file cannot grow (a full /dev/shm: `NoRoom`), the bytes or pixels that do not fit go through the
pipe, pickled, as they did before the files.

The parent copies each image's pixels out as its message arrives. The child writes them at increasing
offsets, from the start at each request (the parent has taken the last one's); past `WRAP_BYTES` it asks
the parent (`WRAP` on the pipe) before starting over, and waits for the answer: messages arrive in order,
so by then every earlier image has been taken. The file stays within WRAP_BYTES (or one image's pixels,
if larger) whatever the batch, inside the child's address-space cap.

Run by `isolated.IsolatedDecoder` as `python -m pipeline.decode.child MAX_MEMORY_MB PIXELS_FD INPUTS_FD`.
A plain subprocess rather than multiprocessing: in a Ray worker, `fork` is unsafe (gRPC threads) and
`spawn`/`forkserver` re-import the worker's `__main__`.
"""

from __future__ import annotations

import math
import mmap
import os
import pickle
import select
import struct
import sys
from typing import IO, Any

import numpy as np

_LEN = struct.Struct("<Q")
ALIGN = 64  # each array at a cache-line boundary
WRAP_BYTES = 64 << 20  # the pixel file's size before the child starts over at its beginning
WRAP = "wrap"  # the child: may I write from the start again? the parent: yes (all taken)


# Fault injection for the fallback test: with CAPFILT_FAILPOINT_SHARED_BYTES=<n>, a shared file may not grow
# past n bytes, as on a full /dev/shm. Off unless set.
_ROOM = int(os.environ.get("CAPFILT_FAILPOINT_SHARED_BYTES", "0") or 0)


class NoRoom(Exception):
    """The shared file could not grow (a full /dev/shm: a container's is 64 MiB by default). Not an OSError:
    the parent reads OSError as its child's death."""


class Shared:
    """A file mapped by the parent and the child (an unlinked file in /dev/shm: memory, gone with both).
    The writer grows it (its pages reserved: posix_fallocate) when it needs more; the reader maps it again
    when an offset is past its map."""

    def __init__(self, fd: int, cap: int = 0):
        self.fd, self.cap = fd, cap  # cap: how far doubling grows it (0: no limit); a larger need is met
        self.map: mmap.mmap | None = None
        self.buf: memoryview | None = None

    def _mapped(self, end: int, grow: bool) -> memoryview:
        """The map, covering at least [0, end): the file grown to it first (a writer) or only mapped again
        (a reader: EOFError when the file is shorter, as from a child that died mid-write)."""
        end = max(end, 1)  # an empty file cannot be mapped
        if self.buf is not None and len(self.buf) >= end:
            return self.buf
        have = os.fstat(self.fd).st_size
        if have < end:
            if not grow:
                raise EOFError(f"the decoder's shared file holds {have} bytes, a result ends at {end}")
            doubled = max(2 * have, 1 << 20)
            size = max(end, min(doubled, self.cap) if self.cap else doubled)
            if _ROOM and size > _ROOM:
                raise NoRoom(f"failpoint: the shared file may not grow past {_ROOM} bytes")
            try:
                # The pages reserved now (tmpfs), so a full /dev/shm is an error here, not a SIGBUS when
                # they are first written
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(self.fd, have, size - have)
                else:
                    os.ftruncate(self.fd, size)
            except OSError as e:
                raise NoRoom(f"the decoder's shared file cannot grow to {size} bytes: {e}") from e
            have = os.fstat(self.fd).st_size
        self.map = mmap.mmap(self.fd, have)  # the older map is closed once nothing points into it
        self.buf = memoryview(self.map)
        return self.buf

    @staticmethod
    def footprint(arrays: dict[str, np.ndarray]) -> int:
        return sum(-(-a.nbytes // ALIGN) * ALIGN for a in arrays.values())

    def put(self, arrays: dict[str, np.ndarray], offset: int) -> tuple[dict[str, tuple[str, tuple[int, ...], int]], int]:
        """The arrays written from `offset` on → (name → (dtype, shape, offset)), the next free offset."""
        layout = {}
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            end = offset + a.nbytes
            dst = np.frombuffer(self._mapped(end, True), dtype=a.dtype, count=a.size, offset=offset)
            dst[...] = a.reshape(-1)
            layout[name] = (a.dtype.str, a.shape, offset)
            offset = -(-end // ALIGN) * ALIGN
        return layout, offset

    def take(self, layout: dict[str, tuple[str, tuple[int, ...], int]],
             into: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The arrays a `put` wrote, copied out (the space is written again later): each into its array of
        `into` where one of that dtype and shape is given (the row of a batch's column: one copy, not two),
        the others into new arrays, returned."""
        out = {}
        for name, (dtype, shape, offset) in layout.items():
            dt = np.dtype(dtype)
            count = math.prod(shape)
            buf = self._mapped(offset + count * dt.itemsize, False)
            src = np.frombuffer(buf, dtype=dt, count=count, offset=offset).reshape(shape)
            dst = (into or {}).get(name)
            if dst is not None and dst.dtype == dt and dst.shape == src.shape:
                dst[...] = src
            else:
                out[name] = src.copy()
        return out

    def put_bytes(self, datas: list[bytes]) -> list[tuple[int, int]]:
        """Each of `datas` written one after the other from the start → (offset, length) of each."""
        spans, offset = [], 0
        for data in datas:
            spans.append((offset, len(data)))
            offset += len(data)
        buf = self._mapped(offset, True)
        for (at, n), data in zip(spans, datas, strict=True):
            buf[at : at + n] = data
        return spans

    def get_bytes(self, span: tuple[int, int]) -> bytes:
        at, n = span
        if not n:
            return b""
        return bytes(self._mapped(at + n, False)[at : at + n])


def send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=5)
    for part in (_LEN.pack(len(data)), data):
        view = memoryview(part)
        while view:  # an unbuffered pipe may take a write in pieces
            n = stream.write(view)
            view = view[n if n is not None else len(view) :]
    stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("decoder process closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(stream: IO[bytes], timeout: float | None = None) -> Any:
    """The next message; TimeoutError when none starts within `timeout` seconds (an unbuffered stream:
    a buffered one could hold the message where select() cannot see it)."""
    if timeout is not None and not select.select([stream], [], [], timeout)[0]:
        raise TimeoutError(f"no result within {timeout:g}s")
    (n,) = _LEN.unpack(_read_exact(stream, _LEN.size))
    return pickle.loads(_read_exact(stream, n))


def main() -> None:
    import resource

    limit = int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from pipeline.decode.image import decode_many

    pixels, inputs = Shared(int(sys.argv[2]), WRAP_BYTES), Shared(int(sys.argv[3]))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            images, targets, cfg = receive(stdin)  # (offset, length) in the inputs' file, or the bytes themselves
        except EOFError:
            return
        offset = 0  # the parent has taken every result of the last request
        for image in images:
            data = inputs.get_bytes(image) if isinstance(image, tuple) else image
            kind, payload, w, h, hashed = decode_many([data], targets, cfg)[0]
            layout = None
            if isinstance(payload, dict):
                if offset and offset + pixels.footprint(payload) > WRAP_BYTES:
                    send(stdout, WRAP)
                    receive(stdin)  # the parent's answer: it has taken every image before this one
                    offset = 0
                try:
                    layout, offset = pixels.put(payload, offset)
                    payload = None
                except NoRoom:  # no room in /dev/shm: this image's pixels through the pipe
                    pass
            send(stdout, (kind, payload, w, h, hashed, layout))


if __name__ == "__main__":
    main()
