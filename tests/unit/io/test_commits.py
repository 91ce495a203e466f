"""Commits: a shard that failed on infrastructure errors commits nothing, whatever order its blocks arrive
in; a shard another driver committed meanwhile is kept (same config) or refused (another)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.io.shards import Shard
from pipeline.io.writer import ShardCommitter, shard_ids
from pipeline.schema import CAPTIONS_SCHEMA, OK, SHARD_END


def block(source: str, keys: list[str], end: dict | None = None) -> pa.Table:
    rows = [{"key": k, "source": source, "status": OK, "caption": "c"} for k in keys]
    if end is not None:
        rows.append({"key": f"{SHARD_END}:{source}", "source": source, "meta": json.dumps(end), "status": SHARD_END})
    return pa.Table.from_pylist(rows, schema=CAPTIONS_SCHEMA)


def test_a_failed_shard_drops_its_rows_before_and_after_its_end(tmp_path):
    shards = [Shard("s3://b/a.tar", "webdataset"), Shard("s3://b/b.tar", "webdataset")]
    c = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, shard_ids(shards), {}, "d")
    c.add(block("s3://b/a.tar", ["a1", "a2"]))
    c.add(block("s3://b/a.tar", [], end={"failed": "PermissionError: 403", "attempts": 6}))
    c.add(block("s3://b/a.tar", ["a3"]))  # a block that an actor pool handed on late
    c.add(block("s3://b/b.tar", ["b1"], end={"rows": 1}))
    assert c.failed == {"s3://b/a.tar": "PermissionError: 403"} and c.committed == ["s3://b/b.tar"]
    assert c.incomplete() == []
    assert sorted(p.name for p in (tmp_path / "captions").iterdir()) == ["b.parquet"]
    assert [p.name for p in (tmp_path / "_committed").iterdir()] == ["b.json"]


def test_a_shard_another_driver_committed_meanwhile_is_kept_or_refused(tmp_path):
    shards = [Shard("s3://b/a.tar", "webdataset")]
    ids = shard_ids(shards)
    first = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, ids, {}, "d1")
    first.add(block("s3://b/a.tar", ["a1", "a2"], end={"rows": 2}))
    written = (tmp_path / "captions" / "a.parquet").read_bytes()
    same = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, ids, {}, "d1")
    same.add(block("s3://b/a.tar", ["a1", "a2"], end={"rows": 2}))
    assert same.committed == ["s3://b/a.tar"] and same.counts == {"ok": 2}
    assert (tmp_path / "captions" / "a.parquet").read_bytes() == written
    other = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, ids, {}, "d2")
    with pytest.raises(RuntimeError, match="committed .* by another run"):
        other.add(block("s3://b/a.tar", ["a1", "a2"], end={"rows": 2}))
    assert (tmp_path / "captions" / "a.parquet").read_bytes() == written


def test_a_large_shard_waits_in_parts_and_commits_as_one_file(tmp_path):
    """With rows_per_part=3 the committer never holds more than a part of a shard; the shard still appears
    as one file (one row group per part), only at its commit, and its parts are gone after."""
    shards = [Shard("s3://b/big.tar", "webdataset"), Shard("s3://b/bad.tar", "webdataset")]
    c = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, shard_ids(shards), {}, "d", rows_per_part=3)
    keys = [f"k{i:02d}" for i in range(10)]
    for i in range(0, 10, 2):
        c.add(block("s3://b/big.tar", keys[i : i + 2]))
        assert c.pending["s3://b/big.tar"].buffered < 3 + 2
        assert not (tmp_path / "captions").exists()  # nothing visible before the commit
    assert len(list((tmp_path / "_staging" / "big").iterdir())) == 2  # parts of 4 and 4; the last 2 still held
    c.add(block("s3://b/big.tar", [], end={"rows": 10}))
    f = pq.ParquetFile(tmp_path / "captions" / "big.parquet")
    assert f.metadata.num_row_groups == 3 and f.read()["key"].to_pylist() == keys
    assert not (tmp_path / "_staging" / "big").exists()
    assert json.loads((tmp_path / "_committed" / "big.json").read_text())["counts"] == {"ok": 10}
    c.add(block("s3://b/bad.tar", keys[:4]))
    assert (tmp_path / "_staging" / "bad").exists()
    c.add(block("s3://b/bad.tar", [], end={"failed": "TimeoutError", "attempts": 6}))
    assert not (tmp_path / "_staging" / "bad").exists() and not (tmp_path / "captions" / "bad.parquet").exists()


def test_a_shard_that_arrives_in_one_block_is_written_a_part_at_a_time(tmp_path):
    """Ray Data hands a whole shard over as one block when its rows are small: it is written in key order,
    in row groups of at most rows_per_part rows (never several copies of the whole shard at once)."""
    shards = [Shard("s3://b/one.tar", "webdataset")]
    c = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, shard_ids(shards), {}, "d", rows_per_part=3)
    keys = [f"k{i:02d}" for i in range(10)]
    c.add(block("s3://b/one.tar", keys[::-1], end={"rows": 10}))
    f = pq.ParquetFile(tmp_path / "captions" / "one.parquet")
    assert [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)] == [3, 3, 3, 1]
    assert f.read()["key"].to_pylist() == keys and c.committed == ["s3://b/one.tar"]
    assert not (tmp_path / "_staging").exists()


@pytest.mark.parametrize("size", [1_000, 12 << 20])  # one PUT at close; a multipart upload (s3fs: 5 MB blocks)
def test_a_write_that_fails_midway_leaves_nothing_on_s3(s3, size):
    from pipeline.io.writer import write_atomic

    s3.mkdir("capfilt-partial")

    def write(f):  # type: ignore[no-untyped-def]
        f.write(b"x" * size)
        raise ConnectionResetError("the network went away")

    with pytest.raises(ConnectionResetError):
        write_atomic("s3://capfilt-partial/captions/a.parquet", write)
    s3.invalidate_cache()
    assert not s3.exists("capfilt-partial/captions/a.parquet")
    write_atomic("s3://capfilt-partial/captions/a.parquet", lambda f: f.write(b"whole"))
    assert s3.cat_file("capfilt-partial/captions/a.parquet") == b"whole"


def test_a_marker_is_written_once_locally_and_on_s3(tmp_path, s3):
    from pipeline.io.writer import create_once

    assert create_once(str(tmp_path / "m" / "a.json"), b"first") is True
    assert create_once(str(tmp_path / "m" / "a.json"), b"second") is False
    assert (tmp_path / "m" / "a.json").read_bytes() == b"first" and len(list((tmp_path / "m").iterdir())) == 1
    s3.mkdir("capfilt-once")
    assert create_once("s3://capfilt-once/m/a.json", b"first") is True
    assert create_once("s3://capfilt-once/m/a.json", b"second") is False  # If-None-Match: * (moto honours it)
    assert s3.cat_file("capfilt-once/m/a.json") == b"first"


def test_of_two_committers_racing_on_a_shard_one_commits_it(tmp_path, monkeypatch):
    """Both checked before either committed (the race): the second one's marker write finds the first's,
    and it counts the shard as committed meanwhile, once, without a second marker."""
    shards = [Shard("s3://b/a.tar", "webdataset")]
    ids = shard_ids(shards)
    first = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, ids, {}, "d1")
    second = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, ids, {}, "d1")
    checks = []
    real = second._committed_meanwhile

    def late_check(source, name):  # the first call (before the data) sees no marker yet
        checks.append(name)
        return False if len(checks) == 1 else real(source, name)

    monkeypatch.setattr(second, "_committed_meanwhile", late_check)
    first.add(block("s3://b/a.tar", ["a1", "a2"], end={"rows": 2}))
    second.add(block("s3://b/a.tar", ["a1", "a2"], end={"rows": 2}))
    assert len(checks) == 2 and second.committed == ["s3://b/a.tar"] and second.counts == {"ok": 2}
    assert [p.name for p in (tmp_path / "_committed").iterdir()] == ["a.json"]
    assert pq.read_table(tmp_path / "captions")["key"].to_pylist() == ["a1", "a2"]


@pytest.mark.parametrize("rows_per_part", [0, 3])  # whole, and from staged parts
def test_a_committed_file_names_its_run_and_carries_its_scores_sketch(tmp_path, rows_per_part):
    from pipeline.review.sketch import file_metadata
    from pipeline.schema import RUN_ID, TEXT_SCORE

    schema = pa.schema([("key", pa.string()), ("source", pa.string()), ("status", pa.string()),
                        ("meta", pa.string()), (TEXT_SCORE, pa.float32())])
    plain = pa.schema([("key", pa.string()), ("status", pa.string())])
    shards = [Shard("s3://b/s.tar", "webdataset")]
    c = ShardCommitter(str(tmp_path), {"captions": schema, "embeddings": plain}, shard_ids(shards), {}, "d",
                       rows_per_part=rows_per_part, run_id="20261203T000000Z-abcdef")
    scores = [0.9, 0.1, None, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]
    for i in range(0, 10, 2):
        c.add(pa.Table.from_pylist([{"key": f"k{j}", "source": "s3://b/s.tar", "status": OK, TEXT_SCORE: scores[j]}
                                    for j in range(i, i + 2)], schema=schema))
    c.add(pa.Table.from_pylist([{"key": f"{SHARD_END}:s", "source": "s3://b/s.tar", "status": SHARD_END,
                                 "meta": json.dumps({"rows": 10})}], schema=schema))
    f = pq.ParquetFile(tmp_path / "captions" / "s.parquet")
    meta = file_metadata(f.schema_arrow)
    assert meta["run_id"] == "20261203T000000Z-abcdef"
    assert meta["sketches"][TEXT_SCORE]["n"] == 9
    points = np.asarray(meta["sketches"][TEXT_SCORE]["points"], dtype=np.float32)  # float32 exactly
    assert points.tolist() == sorted(np.float32(s).item() for s in scores if s is not None)
    t = f.read()
    assert set(t[RUN_ID].to_pylist()) == {"20261203T000000Z-abcdef"} and t.num_rows == 10
    emb = pq.ParquetFile(tmp_path / "embeddings" / "s.parquet")
    assert file_metadata(emb.schema_arrow)["sketches"] == {} and emb.read()[RUN_ID].to_pylist()[0] == "20261203T000000Z-abcdef"
    assert json.loads((tmp_path / "_committed" / "s.json").read_text())["run_id"] == "20261203T000000Z-abcdef"


def test_keep_fraction_holds_shards_until_it_can_decide_and_decides_them_all(tmp_path):
    """Fewer shards than clean.calibration_shards: nothing is committed until the end of the run, when the
    threshold comes from the shards there are; each row is then decided by it."""
    from pipeline.config import CleanConfig
    from pipeline.review.calibration import KeepFraction
    from pipeline.schema import clean_schema

    schema = clean_schema(("itm",))
    shards = [Shard(f"s3://b/{n}.tar", "webdataset") for n in ("a", "b")]
    clean = CleanConfig(mode="keep_fraction", fraction=0.5, calibration_shards=5)
    c = ShardCommitter(str(tmp_path), {"captions": schema}, shard_ids(shards), {}, "d",
                       calibration=KeepFraction(clean, str(tmp_path), "d", {}))

    def rows(source, scores):
        return pa.Table.from_pylist(
            [{"key": f"k{i}", "source": source, "status": OK, "text": f"t{i}", "captions": ["c"], "itm_text_score": s,
              "itm_caption_scores": [0.0], "text_score": s, "caption_scores": [0.0], "keep": True, "keep_text": True}
             for i, s in enumerate(scores)]
            + [{"key": f"{SHARD_END}:{source}", "source": source, "status": SHARD_END,
                "meta": json.dumps({"rows": len(scores)})}], schema=schema)

    c.add(rows("s3://b/a.tar", [0.9, 0.1, 0.7]))
    c.add(rows("s3://b/b.tar", [0.3, 0.5, 0.8]))
    assert c.committed == [] and c.held == ["s3://b/a.tar", "s3://b/b.tar"] and not (tmp_path / "captions").exists()
    c.release()
    cal = json.loads((tmp_path / "_calibration.json").read_text())
    assert cal["shards"] == 2 and cal["threshold"] == pytest.approx(0.7) and cal["kept_in_calibration"] == 3
    got = pq.read_table(tmp_path / "captions").to_pylist()
    assert sorted(c.committed) == ["s3://b/a.tar", "s3://b/b.tar"]
    assert {(r["source"][-5], r["key"]): r["keep_text"] for r in got} == {
        ("a", "k0"): True, ("a", "k1"): False, ("a", "k2"): True, ("b", "k0"): False, ("b", "k1"): False, ("b", "k2"): True}
    assert all(r["keep"] == r["keep_text"] and (r["caption"] == r["text"] if r["keep"] else r["caption"] is None) for r in got)


def test_markers_are_read_from_the_runs_indexes_and_only_those_no_index_holds_as_they_are(tmp_path, monkeypatch):
    """A resume reads the markers from the index parts the runs wrote (a request per INDEX_EVERY shards), and
    on its own only a marker that no index holds as it now is: one of a run cut short before its index
    part, or one a retry rewrote."""
    import fsspec

    from pipeline.io import writer

    monkeypatch.setattr(writer, "INDEX_EVERY", 4)
    shards = [Shard(f"s3://b/{i:05d}.tar", "webdataset") for i in range(10)]
    ids = shard_ids(shards)
    c = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, ids, {}, "d", run_id="20261206T000000Z-aaaaaa")
    for s in shards[:9]:
        c.add(block(s.uri, [s.uri[-9:-4]], end={"rows": 1}))
    c.write_index()  # the run's end: 9 markers in parts of 4, 4, 1
    assert sorted(p.name for p in (tmp_path / "_index").iterdir()) == [
        f"20261206T000000Z-aaaaaa-0000{k}.json" for k in range(3)]
    cut = ShardCommitter(str(tmp_path), {"captions": CAPTIONS_SCHEMA}, ids, {}, "d", run_id="20261206T010000Z-bbbbbb")
    cut.add(block(shards[9].uri, ["00009"], end={"rows": 1}))  # ...and no write_index: the run was killed
    retried = json.loads((tmp_path / "_committed" / "00003.json").read_text())
    retried["retried_rows"] = 1
    (tmp_path / "_committed" / "00003.json").write_text(json.dumps(retried))  # a retry rewrote this one
    reads: list[str] = []
    cat = fsspec.implementations.local.LocalFileSystem.cat

    def counted(self, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.extend([path] if isinstance(path, str) else path)
        return cat(self, path, *args, **kwargs)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "cat", counted)
    markers = writer.committed_shards(str(tmp_path), {})
    assert sorted(markers) == sorted(s.uri for s in shards) and markers[shards[3].uri]["retried_rows"] == 1
    assert all(m == json.loads((tmp_path / "_committed" / f"{m['name']}.json").read_text()) for m in markers.values())
    singles = sorted(p.rsplit("/", 1)[1] for p in reads if "/_index/" not in p)
    assert singles == ["00003.json", "00009.json"]  # 10 markers: 3 index parts and 2 markers read
