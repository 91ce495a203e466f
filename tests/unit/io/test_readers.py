import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.io.readers import read_shard
from pipeline.io.shards import Shard, expand_braces, list_shards
from pipeline.schema import MISSING_IMAGE, OK, READ_ERROR, SHARD_END
from tests.fixtures.samples import jpeg, tar_bytes, write_folder, write_parquet

CFG = InputConfig(rows_per_block=3)


def rows(shard: Shard, cfg=CFG) -> list[dict]:
    tables = list(read_shard(shard, cfg, {}))
    assert all(t.num_rows <= cfg.rows_per_block + 1 for t in tables)  # streamed in blocks
    out = pa.concat_tables(tables).to_pylist()
    end = out.pop()
    assert end["status"] == SHARD_END and json.loads(end["meta"])["rows"] == len(out)
    return out


def test_a_glob_of_only_unreadable_files_is_an_error_naming_what_it_matched(tmp_path):
    for i in range(4):
        (tmp_path / f"{i:05d}.tar.gz").write_bytes(b"gzip")
    with pytest.raises(ValueError, match=r"matched 4 object\(s\) \(00000.tar.gz, 00001.tar.gz, 00002.tar.gz, ...\) but none"):
        list_shards([str(tmp_path / "*")])


def test_parquet_columns_of_any_type_never_crash_the_read(tmp_path):
    pq.write_table(pa.table({"key": [1, 2], "jpg": [b"x", None], "txt": [["a", "b"], None]}), tmp_path / "ints.parquet")
    got = rows(Shard(str(tmp_path / "ints.parquet"), "parquet"), InputConfig(rows_per_block=3, text_column="txt"))
    assert [r["key"] for r in got] == ["1", "2"] and [r["status"] for r in got] == [OK, MISSING_IMAGE]
    assert got[0]["text"] == '["a", "b"]' and got[1]["text"] is None  # a list text column named: kept, as JSON
    pq.write_table(pa.table({"jpg": [jpeg(np.zeros((8, 8, 3), np.uint8))], "txt": [7]}), tmp_path / "num.parquet")
    got = rows(Shard(str(tmp_path / "num.parquet"), "parquet"), InputConfig(text_column="txt"))
    assert got[0]["status"] == OK and got[0]["text"] == "7"
    # found by name, a column must hold text: a number column is no alt-text
    assert rows(Shard(str(tmp_path / "num.parquet"), "parquet"))[0]["text"] is None


def test_a_parquet_image_column_of_another_type_fails_the_shard_uncommitted(tmp_path):
    """Columns that do not fit the config are the config's mistake, not rows: the shard ends `failed` at once
    (no retries), so nothing of it commits and the rerun with the setting fixed reads it."""
    pq.write_table(pa.table({"key": [1, 2], "jpg": [10, 20]}), tmp_path / "ints.parquet")
    tables = list(read_shard(Shard(str(tmp_path / "ints.parquet"), "parquet"), InputConfig(image_column="jpg"), {}))
    (end,) = pa.concat_tables(tables).to_pylist()
    assert end["status"] == SHARD_END
    meta = json.loads(end["meta"])
    assert meta["attempts"] == 1 and "input.image_column 'jpg' holds int64, not image bytes" in meta["failed"]
    tables = list(read_shard(Shard(str(tmp_path / "ints.parquet"), "parquet"), CFG, {}))  # auto: none to find
    assert "no column of image bytes (columns: key (int64), jpg (int64))" in json.loads(tables[-1]["meta"][0].as_py())["failed"]


def test_zero_byte_objects_are_rows(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "empty.parquet").write_bytes(b"")
    assert [r["status"] for r in rows(Shard(str(tmp_path / "empty.tar"), "webdataset"))] == [READ_ERROR]
    assert [r["status"] for r in rows(Shard(str(tmp_path / "empty.parquet"), "parquet"))] == [READ_ERROR]


def test_a_parquet_shard_end_says_what_its_footer_lists(tmp_path):
    write_parquet(tmp_path / "p.parquet", 5, size=32)
    tables = list(read_shard(Shard(str(tmp_path / "p.parquet"), "parquet"), CFG, {}))
    end = pa.concat_tables(tables).to_pylist()[-1]
    assert json.loads(end["meta"]) == {"rows": 5, "input_rows": 5,
                                       "columns": {"image": "jpg", "text": "caption", "key": "key"}}


def test_a_folder_is_listed_as_parts_of_files_per_shard_samples(tmp_path):
    keys = write_folder(tmp_path / "imgs", 10, size=32)
    parts = list_shards([str(tmp_path / "imgs")], files_per_shard=4)
    assert [s.uri.rsplit("/", 1)[1] for s in parts] == ["imgs#part-00000", "imgs#part-00001", "imgs#part-00002"]
    assert [len(s.files) for s in parts] == [4, 4, 2] and all(s.root == str(tmp_path / "imgs") for s in parts)
    got = [r for s in parts for r in rows(s)]
    assert sorted(r["key"] for r in got) == sorted(keys) and {r["status"] for r in got} == {OK}
    again = list_shards([str(tmp_path / "imgs")], files_per_shard=4)
    assert [(s.uri, s.etag) for s in again] == [(s.uri, s.etag) for s in parts]  # stable across runs
    (tmp_path / "imgs" / "aaa.jpg").write_bytes(jpeg(np.zeros((8, 8, 3), np.uint8)))  # the folder changed
    assert list_shards([str(tmp_path / "imgs")], files_per_shard=4)[0].etag != parts[0].etag


def test_expand_braces():
    assert expand_braces("s3://b/{00008..00010}.tar") == ["s3://b/00008.tar", "s3://b/00009.tar", "s3://b/00010.tar"]
    assert expand_braces("{a,b}/{1..2}") == ["a/1", "a/2", "b/1", "b/2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_list_shards_globs_braces_and_errors(tmp_path):
    for i in range(3):
        (tmp_path / f"{i:05d}.tar").write_bytes(tar_bytes({}))
    (tmp_path / "00000_stats.json").write_text("{}")
    by_glob = list_shards([str(tmp_path / "*")])
    assert [s.uri.rsplit("/", 1)[1] for s in by_glob] == ["00000.tar", "00001.tar", "00002.tar"]
    assert {s.format for s in by_glob} == {"webdataset"}
    assert len(list_shards([str(tmp_path / "{00000..00001}.tar")])) == 2
    with pytest.raises(FileNotFoundError, match="00006.tar"):
        list_shards([str(tmp_path / "{00006..00007}.tar")])
    assert list_shards([str(tmp_path)]) == by_glob  # a folder of shards stands for its shards
    write_folder(tmp_path / "imgs", 2, size=32)
    assert [s.format for s in list_shards([str(tmp_path / "imgs")])] == ["folder"]  # a folder of images is one


def test_webdataset_groups_members_by_key(tmp_path, photos):
    img = jpeg(photos[0])
    data = tar_bytes({
        "a.jpg": img, "a.txt": b"a cat", "a.json": b'{"url": "http://x/a.jpg"}',
        "b.png": img, "b.txt": b"caf\xe9 latin-1",  # not UTF-8: kept, not lost
        "c.txt": b"text without image",
        "d.jpg": img,
    })
    p = tmp_path / "00000.tar"
    p.write_bytes(data)
    out = rows(Shard(str(p), "webdataset"))
    assert [r["key"] for r in out] == ["a", "b", "c", "d"]
    assert out[0]["text"] == "a cat" and json.loads(out[0]["meta"])["url"] == "http://x/a.jpg"
    assert out[0]["image"] == img and out[0]["source"] == str(p)
    assert out[1]["text"].startswith("caf") and out[1]["status"] == OK
    assert out[2]["status"] == MISSING_IMAGE and out[2]["image"] is None
    assert out[3]["text"] is None and out[3]["status"] == OK


def test_truncated_tar_keeps_rows_read_and_adds_an_error_row(tmp_path, photos):
    data = tar_bytes({f"{i}.jpg": jpeg(photos[i]) for i in range(4)})
    p = tmp_path / "t.tar"
    p.write_bytes(data[: len(data) * 3 // 5])
    out = rows(Shard(str(p), "webdataset"))
    assert out[-1]["status"] == READ_ERROR and "unreadable" in out[-1]["error"]
    assert 1 <= len(out) - 1 < 4 and all(r["status"] == OK for r in out[:-1])


def test_parquet_reader(tmp_path):
    path = tmp_path / "part.parquet"
    keys = write_parquet(path, 7, size=64)
    out = rows(Shard(str(path), "parquet"))
    assert [r["key"] for r in out] == keys
    assert all(r["status"] == OK and r["image"] and r["text"] for r in out)
    assert json.loads(out[0]["meta"]) == {"url": f"https://example.com/{keys[0]}.jpg"}


def test_parquet_without_key_or_text_and_with_null_image(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"img": [b"abc", None], "n": [1, 2]}), path)
    for cfg in (InputConfig(image_column="img"), CFG):  # named, or found: the one bytes column
        out = rows(Shard(str(path), "parquet"), cfg)
        assert [r["key"] for r in out] == ["x/000000000", "x/000000001"]
        assert [r["status"] for r in out] == [OK, MISSING_IMAGE] and out[1]["error"] == "null img"
    tables = list(read_shard(Shard(str(path), "parquet"), InputConfig(image_column="jpg"), {}))
    assert "no image column 'jpg' (columns: img (binary), n (int64)); set input.image_column" in \
        json.loads(tables[-1]["meta"][0].as_py())["failed"]


def test_folder_reader(tmp_path):
    keys = write_folder(tmp_path, 6, size=64)
    (tmp_path / "orphan.txt").write_text("no image")
    out = {r["key"]: r for r in rows(Shard(str(tmp_path), "folder"))}
    assert set(out) == set(keys) | {"orphan"}
    assert out["orphan"]["status"] == MISSING_IMAGE
    assert out["sub/img000"]["text"] and out["img001"]["text"] is None


def test_a_large_row_group_streams_page_by_page(monkeypatch, tmp_path):
    """One 15 MB row group written in small pages: the first block arrives after reading a few pages (and
    the reader's 1 MB buffer per column), not the row group: pyarrow decodes a data page at a time, so
    the page, not the row group, is the unit of a read's memory."""
    import io
    import os

    from pipeline.io import readers

    images = [os.urandom(50_000) for _ in range(300)]
    pq.write_table(pa.table({"jpg": pa.array(images, pa.binary()), "txt": [f"t{i}" for i in range(300)]}),
                   tmp_path / "big.parquet", row_group_size=300, write_batch_size=4, data_page_size=64 << 10)
    data = (tmp_path / "big.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_row_groups == 1
    read = [0]

    class File(io.BytesIO):
        def read(self, n=-1):  # type: ignore[no-untyped-def]
            out = super().read(n)
            read[0] += len(out)
            return out

    class FS:
        def open(self, path, mode="rb"):  # type: ignore[no-untyped-def]
            return File(data)

    monkeypatch.setattr(readers, "get_fs", lambda uri, options=None: (FS(), uri))
    blocks = read_shard(Shard("s3://b/big.parquet", "parquet"), CFG, {})
    first = next(blocks)
    assert first.num_rows == CFG.rows_per_block and first["image"].to_pylist() == images[:3]
    assert read[0] < len(data) // 4, f"read {read[0]} of {len(data)} bytes before the first block"
    rest = pa.concat_tables(list(blocks)).to_pylist()
    assert [r["image"] for r in rest[:-1]] == images[3:] and read[0] >= len(data) - (64 << 10)


def test_a_limited_shard_ends_after_its_first_samples(tmp_path):
    """`capfilt estimate` reads the first samples of a shard: they, then the shard's end at their count."""
    keys = write_parquet(tmp_path / "p.parquet", 10, size=32)
    got = rows(Shard(str(tmp_path / "p.parquet"), "parquet", limit=4))
    assert [r["key"] for r in got] == keys[:4]
    full = rows(Shard(str(tmp_path / "p.parquet"), "parquet", limit=50))  # a limit past the end: the whole shard
    assert [r["key"] for r in full] == keys


def test_a_blocks_image_column_is_the_column_arrow_builds(monkeypatch):
    from pipeline.io import readers

    values = [b"\xff\xd8jpeg", None, b"", b"x" * 70_000, None, b"\x00\x01"]
    got = readers.binary_column(values)
    got.validate(full=True)
    assert got.equals(pa.array(values, type=pa.binary())) and got.null_count == 2
    assert readers.binary_column([b"a", b"b"]).buffers()[0] is None  # no validity bitmap without a null
    assert readers.binary_column([]).equals(pa.array([], type=pa.binary()))
    # past binary's 32-bit offsets, Arrow's builder (which says so itself) instead of offsets that wrap
    calls = []
    monkeypatch.setattr(readers.pa, "array", lambda v, type: calls.append(len(v)) or "arrow's")
    monkeypatch.setattr(readers.np, "fromiter", lambda *a, **k: np.array([2**30, 2**30]))
    assert readers.binary_column([b"a", b"b"]) == "arrow's" and calls == [2]
