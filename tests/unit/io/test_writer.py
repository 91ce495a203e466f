import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.shards import Shard
from pipeline.io.writer import ShardCommitter, committed_shards, shard_ids, write_atomic
from pipeline.schema import CAPTIONS_SCHEMA, SHARD_END


def block(source: str, keys: list[str], end: int | None = None) -> pa.Table:
    rows = [{"key": k, "source": source, "status": "ok", "text": f"t{k}", "meta": None} for k in keys]
    if end is not None:
        rows.append({"key": f"{SHARD_END}:{source}", "source": source, "status": SHARD_END,
                     "meta": json.dumps({"rows": end})})
    schema = pa.schema([*(f for f in CAPTIONS_SCHEMA if f.name != "key"), pa.field("key", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def test_a_shard_is_written_only_when_all_its_rows_arrived(tmp_path):
    c = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, {"s/a.tar": "a", "s/b.tar": "b"}, {}, "d1")
    c.add(block("s/a.tar", ["2", "1"]))
    c.add(block("s/b.tar", [], end=0))  # an empty shard still gets its (empty) file and marker
    assert not (tmp_path / "captions" / "a.parquet").exists()
    c.add(block("s/a.tar", [], end=3))  # the end row can overtake rows of its shard
    assert not (tmp_path / "captions" / "a.parquet").exists()
    c.add(block("s/a.tar", ["3"]))
    t = pq.read_table(tmp_path / "captions" / "a.parquet")
    assert t["key"].to_pylist() == ["1", "2", "3"] and t.schema.equals(CAPTIONS_SCHEMA, check_metadata=False)
    assert pq.read_table(tmp_path / "captions" / "b.parquet").num_rows == 0
    assert set(committed_shards(str(tmp_path), {})) == {"s/a.tar", "s/b.tar"}
    assert c.counts == {"ok": 3} and c.incomplete() == []


def test_a_stem_taken_by_another_inputs_marker_gets_a_hashed_name():
    x, y = Shard("s3://b/x/00001.tar", "webdataset"), Shard("s3://b/y/00001.tar", "webdataset")
    assert shard_ids([x]) == {x.uri: "00001"}
    ids = shard_ids([y], taken={"00001": x.uri})
    assert ids[y.uri].startswith("00001-") and ids[y.uri] != "00001"
    assert shard_ids([x], taken={"00001": x.uri}) == {x.uri: "00001"}  # its own marker: the same name again
    assert shard_ids([y], taken={"00001": x.uri}) == ids  # stable across reruns


def test_rows_arriving_twice_fail_loudly(tmp_path):
    c = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, {"s/a.tar": "a"}, {}, "d1")
    c.add(block("s/a.tar", ["1", "2"]))
    with pytest.raises(RuntimeError, match="2 rows arrived for 1"):
        c.add(block("s/a.tar", [], end=1))


def test_shard_ids_are_stems_unless_they_collide():
    ids = shard_ids([Shard("s3://b/x/00001.tar", "webdataset"), Shard("s3://b/y/00001.tar", "webdataset"),
                     Shard("/d/part-7.parquet", "parquet")])
    assert ids["/d/part-7.parquet"] == "part-7"
    assert ids["s3://b/x/00001.tar"].startswith("00001-") and ids["s3://b/x/00001.tar"] != ids["s3://b/y/00001.tar"]


def test_a_failed_write_leaves_no_final_object_and_no_temp(tmp_path, monkeypatch):
    import fsspec.implementations.local as local

    def broken_mv(self, *a, **k):
        raise OSError("disk gone")

    monkeypatch.setattr(local.LocalFileSystem, "mv", broken_mv)
    with pytest.raises(OSError):
        write_atomic(str(tmp_path / "t" / "x.parquet"), b"data")
    assert list((tmp_path / "t").iterdir()) == []
