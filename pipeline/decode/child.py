"""A decoder child process: reads pickled (images, targets, config) requests on stdin and writes one
result per image, as each is decoded, so that its parent can hold every image to a deadline.

Run by `isolated.IsolatedDecoder` as `python -m pipeline.decode.child MAX_MEMORY_MB`. A plain subprocess
rather than multiprocessing: in a Ray worker, `fork` is unsafe (gRPC threads) and `spawn`/`forkserver`
re-import the worker's `__main__`.
"""

from __future__ import annotations

import pickle
import select
import struct
import sys
from typing import IO, Any

_LEN = struct.Struct("<Q")


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

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            datas, targets, cfg = receive(stdin)
        except EOFError:
            return
        for data in datas:
            send(stdout, decode_many([data], targets, cfg)[0])


if __name__ == "__main__":
    main()
