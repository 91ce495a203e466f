"""A decoder child process: reads pickled (images, targets, config) requests on stdin, writes results.

Run by `isolated.IsolatedDecoder` as `python -m pipeline.decode.child MAX_MEMORY_MB`. A plain subprocess rather
than multiprocessing: in a Ray worker, `fork` is unsafe (gRPC threads) and `spawn`/`forkserver`
re-import the worker's `__main__`.
"""

from __future__ import annotations

import pickle
import struct
import sys
from typing import IO, Any

_LEN = struct.Struct("<Q")


def send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=5)
    stream.write(_LEN.pack(len(data)))
    stream.write(data)
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("decoder process closed its pipe")
    (n,) = _LEN.unpack(head)
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("decoder process closed its pipe")
    return pickle.loads(data)


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
        send(stdout, decode_many(datas, targets, cfg))


if __name__ == "__main__":
    main()
