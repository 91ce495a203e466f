"""Transient vs permanent read errors: the infrastructure's errors are read again and never become rows;
the data's errors are rows and the shard completes."""

from __future__ import annotations

import io
import json

import fsspec
import pyarrow as pa
import pytest

from pipeline.config import InputConfig
from pipeline.io import readers
from pipeline.io.readers import InfraError, read_shard, transient
from pipeline.io.shards import Shard
from pipeline.schema import OK, READ_ERROR, SHARD_END
from tests.fixtures.samples import jpeg, tar_bytes, write_parquet

CFG = InputConfig(rows_per_block=2, read_retries=3, retry_backoff_s=0.0)


class Flaky(io.RawIOBase):
    """A file that raises `error` once `fail_at` bytes have been read, on the first `failures` opens."""

    opens = 0

    def __init__(self, data: bytes, fail_at: int, failures: int, error: OSError):
        type(self).opens += 1
        self.data, self.pos = data, 0
        self.fail = type(self).opens <= failures
        self.fail_at, self.error = fail_at, error

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        if self.fail and self.pos >= self.fail_at:
            raise self.error
        n = min(len(buf), len(self.data) - self.pos, 4096)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


@pytest.fixture()
def flaky_fs(monkeypatch):
    """`readers.get_fs` returning a filesystem whose files fail as `Flaky` does; returns a setter."""
    def setup(data: bytes, fail_at: int, failures: int, error: OSError | None = None) -> None:
        Flaky.opens = 0
        error = error or PermissionError("403 ExpiredToken")

        class FS:
            def open(self, path, mode="rb"):  # type: ignore[no-untyped-def]
                return io.BufferedReader(Flaky(data, fail_at, failures, error))

        monkeypatch.setattr(readers, "get_fs", lambda uri, options=None: (FS(), uri))
    return setup


def tar_of(photos, n: int) -> bytes:
    members = {}
    for i in range(n):
        members[f"{i:03d}.jpg"] = jpeg(photos[i % len(photos)])
        members[f"{i:03d}.txt"] = f"text {i}".encode()
    return tar_bytes(members)


def read(shard: Shard) -> tuple[list[dict], dict]:
    out = pa.concat_tables(list(read_shard(shard, CFG, {}))).to_pylist()
    end = out.pop()
    assert end["status"] == SHARD_END
    return out, json.loads(end["meta"])


def test_errors_are_told_apart_by_where_they_come_from(tmp_path):
    """pyarrow raises a plain OSError for corrupt Parquet metadata, the type s3fs raises for a 503: the
    readers mark the filesystem's errors (InfraError), so corrupt metadata is still the data's fault."""
    assert transient(InfraError("403")) and not transient(PermissionError("403")) and not transient(ValueError())
    write_parquet(tmp_path / "p.parquet", 4, size=64)
    data = bytearray((tmp_path / "p.parquet").read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[-8 - footer : -8] = b"\x15" * footer  # garbage thrift: pyarrow raises OSError
    (tmp_path / "p.parquet").write_bytes(bytes(data))
    rows, end = read(Shard(str(tmp_path / "p.parquet"), "parquet"))
    assert [r["status"] for r in rows] == [READ_ERROR] and end == {"rows": 1}
    assert "OSError" in rows[0]["error"] or "thrift" in rows[0]["error"].lower()


def test_a_transient_error_mid_tar_is_read_again_and_no_row_is_lost_or_doubled(flaky_fs, photos):
    data = tar_of(photos, 10)
    flaky_fs(data, fail_at=len(data) // 2, failures=2)  # fails half way, twice; the third read is clean
    rows, end = read(Shard("s3://b/00000.tar", "webdataset"))
    assert [r["key"] for r in rows] == [f"{i:03d}" for i in range(10)]
    assert {r["status"] for r in rows} == {OK} and end == {"rows": 10}
    assert [r["text"] for r in rows] == [f"text {i}" for i in range(10)]
    assert Flaky.opens == 3


def test_a_shard_that_keeps_failing_ends_failed_with_no_error_row(flaky_fs, photos):
    data = tar_of(photos, 10)
    flaky_fs(data, fail_at=len(data) // 2, failures=99)
    rows, end = read(Shard("s3://b/00000.tar", "webdataset"))
    assert end["failed"].startswith("PermissionError: 403 ExpiredToken") and end["attempts"] == 4
    assert READ_ERROR not in {r["status"] for r in rows}  # never a row: the driver drops what did arrive
    assert Flaky.opens == 4 and len(rows) < 10


def test_a_transient_error_mid_parquet_is_read_again(monkeypatch, tmp_path):
    write_parquet(tmp_path / "p.parquet", 9, size=64)
    data = (tmp_path / "p.parquet").read_bytes()
    opens = []

    class File(io.BytesIO):
        def read(self, n=-1):  # type: ignore[no-untyped-def]
            if len(opens) == 1 and 0 < self.tell() < len(data) // 2:  # the first open: the row group's data
                raise TimeoutError("read timeout")
            return super().read(n)

    class FS:
        def open(self, path, mode="rb"):  # type: ignore[no-untyped-def]
            opens.append(path)
            return File(data)

    monkeypatch.setattr(readers, "get_fs", lambda uri, options=None: (FS(), uri))
    rows, end = read(Shard("s3://b/p.parquet", "parquet"))
    assert len(opens) == 2 and [r["status"] for r in rows] == [OK] * 9
    assert end == {"rows": 9, "input_rows": 9, "columns": {"image": "jpg", "text": "caption", "key": "key"}}
    assert len({r["key"] for r in rows}) == 9


def test_data_errors_are_still_rows(tmp_path, photos):
    """A truncated tar is the data's fault: the rows read, an error row, and the shard completes."""
    data = tar_of(photos, 6)
    path = tmp_path / "00000.tar"
    path.write_bytes(data[: len(data) * 2 // 3])
    rows, end = read(Shard(str(path), "webdataset"))
    assert rows[-1]["status"] == READ_ERROR and "unreadable" in rows[-1]["error"]
    assert end == {"rows": len(rows)} and len(rows) >= 3


def test_local_files_read_through_fsspec_unchanged(tmp_path, photos):
    with fsspec.open(str(tmp_path / "x.tar"), "wb") as f:
        f.write(tar_of(photos, 3))
    rows, end = read(Shard(str(tmp_path / "x.tar"), "webdataset"))
    assert len(rows) == 3 and end == {"rows": 3}
