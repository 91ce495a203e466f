"""Input files whose filesystem errors come out as InfraError: the readers (and the plan's checks of the
inputs, io/layout.py) tell the infrastructure's errors, read again, from the data's, made rows."""

from __future__ import annotations

from typing import Any


class InfraError(OSError):
    """An OSError of the filesystem, not of parsing: the shard is read again (see readers.read_shard)."""


def infra(fn: Any, *args: Any) -> Any:
    """fn(*args), its OSError raised as InfraError."""
    try:
        return fn(*args)
    except InfraError:
        raise
    except OSError as e:
        raise InfraError(f"{type(e).__name__}: {e}") from e


class _Guarded:
    """A file whose filesystem errors come out as InfraError. The parsers' own errors must stay data
    errors, and they cannot be told apart by type: pyarrow raises a plain OSError for corrupt Parquet
    metadata, the same type s3fs raises for a 503 or an expired token."""

    def __init__(self, f: Any):
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def read(self, *args: Any) -> Any:
        return infra(self._f.read, *args)

    def readinto(self, buf: Any) -> Any:
        return infra(self._f.readinto, buf)

    def seek(self, *args: Any) -> Any:
        return infra(self._f.seek, *args)

    def __enter__(self) -> _Guarded:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def open_input(fs: Any, path: str) -> _Guarded:
    """An input file whose filesystem errors come out as InfraError (see _Guarded)."""
    return _Guarded(infra(fs.open, path, "rb"))
