"""Inputs as their tools write them: img2dataset 1.47's three output formats and Hugging Face `datasets`'
image Parquet, read with no column settings; the columns checked before Ray starts."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.io.layout import InputLayoutError, check_inputs
from pipeline.io.readers import read_shard
from pipeline.io.shards import Shard, list_shards
from pipeline.schema import MISSING_IMAGE, OK, SHARD_END
from tests.fixtures import img2dataset
from tests.fixtures.img2dataset import NOT_AN_IMAGE, NOT_FOUND
from tests.fixtures.samples import jpeg, photos

FAILURES = {2: NOT_FOUND, 5: NOT_AN_IMAGE, 11: NOT_FOUND}


def read_all(inputs: list[str], cfg: InputConfig | None = None) -> tuple[list[Shard], list[dict]]:
    cfg = cfg or InputConfig(rows_per_block=5)
    shards = list_shards(inputs, cfg.format, {}, cfg.image_extensions, cfg.files_per_shard)
    out = []
    for s in shards:
        got = pa.concat_tables(list(read_shard(s, cfg, {}))).to_pylist()
        end = got.pop()
        meta = json.loads(end["meta"])
        assert end["status"] == SHARD_END and "failed" not in meta and meta["rows"] == len(got)
        out += got
    return shards, out


def expected_text(caption: str | None) -> str | None:
    return caption if caption else None  # an empty alt-text is none; img2dataset writes '' for a null one in tars


@pytest.fixture
def web(tmp_path: Path) -> list[img2dataset.Sample]:
    return img2dataset.web_samples(16, FAILURES)


def test_img2dataset_parquet_every_sample_is_a_row_with_its_alt_text_and_the_writers_reason(tmp_path, web):
    meta = img2dataset.write(tmp_path / "pq", web, "parquet")
    shards, rows = read_all([str(tmp_path / "pq" / "*")])  # the glob matches the _stats.json files too
    assert [s.uri.rsplit("/", 1)[1] for s in shards] == ["00000.parquet", "00001.parquet"]
    assert list_shards([str(tmp_path / "pq")]) == shards  # the output folder itself: its Parquet shards
    by_key = {r["key"]: r for r in rows}
    assert sorted(by_key) == sorted(meta) and len(rows) == 16  # every sample once, failed ones included
    for key, m in meta.items():
        r = by_key[key]
        sample = next(s for s in web if s.url == m["url"])
        assert r["text"] == expected_text(sample.caption)  # img2dataset's `caption` column: scored, not null
        if sample.failure is None:
            assert r["status"] == OK and r["image"] == sample.image
            assert (json.loads(r["meta"])["width"], json.loads(r["meta"])["height"]) == sample.size
        else:  # the reason img2dataset gave, not only "null jpg"
            assert r["status"] == MISSING_IMAGE and r["image"] is None
            assert r["error"] == f"{sample.failure[0]}: {sample.failure[1]}"
    assert by_key["000002"]["error"] == "failed_to_download: HTTP Error 404: Not Found"
    assert by_key["000005"]["error"] == "failed_to_resize: Image decoding error"


def test_img2dataset_webdataset_tars_are_read_and_its_metadata_parquet_beside_them_is_not(tmp_path, web):
    meta = img2dataset.write(tmp_path / "wds", web, "webdataset")
    assert sorted(os.listdir(tmp_path / "wds")) == ["00000.parquet", "00000.tar", "00000_stats.json",
                                                     "00001.parquet", "00001.tar", "00001_stats.json"]
    shards, rows = read_all([str(tmp_path / "wds" / "*")])
    assert [(s.uri.rsplit("/", 1)[1], s.format) for s in shards] == [("00000.tar", "webdataset"), ("00001.tar", "webdataset")]
    assert list_shards([str(tmp_path / "wds")]) == shards  # the output folder itself: its tars
    ok = {k: m for k, m in meta.items() if m["status"] == "success"}  # a tar holds the downloaded samples only
    assert sorted(r["key"] for r in rows) == sorted(ok) and {r["status"] for r in rows} == {OK}
    for r in rows:
        assert r["text"] == expected_text(ok[r["key"]]["caption"])
        assert json.loads(r["meta"]) == ok[r["key"]]  # KEY.json as it is: url, sizes, sha256, ...
    # the alt-text can come from a field of KEY.json instead: the same texts
    _, from_json = read_all([str(tmp_path / "wds" / "*.tar")], InputConfig(text_field="caption"))
    assert {r["key"]: r["text"] for r in from_json} == {r["key"]: r["text"] for r in rows}


def test_img2dataset_files_output_is_a_folder_of_shards(tmp_path, web):
    meta = img2dataset.write(tmp_path / "files", web, "files")
    shards, rows = read_all([str(tmp_path / "files")])
    assert [s.format for s in shards] == ["folder"]  # its X.parquet beside each X/ folder is metadata
    ok = {k: m for k, m in meta.items() if m["status"] == "success"}
    by_key = {r["key"]: r for r in rows}
    assert sorted(by_key) == sorted(f"{'00000' if int(k) < 10 else '00001'}/{k}" for k in ok)  # shard folder/key
    for key, r in by_key.items():
        assert r["status"] == OK and r["text"] == expected_text(ok[key.split("/")[1]]["caption"])


def test_hugging_face_image_parquet_is_read_with_no_column_settings(tmp_path):
    """`datasets`' own writer: `image` struct<bytes, path> with a `huggingface` schema note, `text`; an image it
    loaded from a file is kept as that file's path (bytes null), a missing image is a null struct."""
    import datasets
    from PIL import Image

    ph = photos(64)
    Image.fromarray(ph[2]).save(tmp_path / "file.png")
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(ph[0]), Image.fromarray(ph[1]), str(tmp_path / "file.png"),
                                               None],
                                     "text": ["a cat", "a rocket", "from a file", "no image"]}, features=features)
    ds.to_parquet(str(tmp_path / "hf" / "train-00000-of-00001.parquet"))
    schema = pq.read_schema(tmp_path / "hf" / "train-00000-of-00001.parquet")
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert b"huggingface" in schema.metadata
    shards, rows = read_all([str(tmp_path / "hf" / "*.parquet")])
    assert [r["key"] for r in rows] == [f"train-00000-of-00001/{i:09d}" for i in range(4)]
    assert [r["text"] for r in rows] == ["a cat", "a rocket", "from a file", "no image"]
    assert [r["status"] for r in rows] == [OK, OK, OK, MISSING_IMAGE]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rows[0]["image"]))), ph[0])  # datasets' PNG, lossless
    assert rows[2]["image"] == (tmp_path / "file.png").read_bytes()  # the file it names
    assert json.loads(rows[2]["meta"]) == {"path": str(tmp_path / "file.png")}
    assert rows[3]["error"] == "null image.bytes"
    # a path relative to the machine that wrote it is not guessed at: a row that says so
    pq.write_table(pa.table({"image": pa.array([{"bytes": None, "path": "imgs/a.jpg"}], schema.field("image").type)}),
                   tmp_path / "rel.parquet")
    _, (row,) = read_all([str(tmp_path / "rel.parquet")])
    assert row["status"] == MISSING_IMAGE and "relative path 'imgs/a.jpg'" in row["error"]


def test_the_check_before_ray_names_the_file_its_columns_and_the_setting(tmp_path, web):
    img2dataset.write(tmp_path / "pq", web, "parquet")
    inputs = [str(tmp_path / "pq" / "*.parquet")]

    def check(cfg: InputConfig, alt_text: bool = True) -> dict:
        firsts: list[Shard] = []
        shards = list_shards(inputs, firsts=firsts)
        assert [s.uri.rsplit("/", 1)[1] for s in firsts] == ["00000.parquet"]  # one footer read per input
        return check_inputs(shards, firsts, cfg, {}, alt_text)

    assert check(InputConfig()) == {"parquet": {"image": "jpg", "text": "caption", "key": "key", "from": "00000.parquet"}}
    with pytest.raises(InputLayoutError, match=r"00000.parquet: no image column 'img' \(columns: similarity \(double\), "
                                               r"caption \(string\), .*jpg \(binary\)\); set input.image_column"):
        check(InputConfig(image_column="img"))
    with pytest.raises(InputLayoutError, match=r"input.image_column 'url' holds string, not image bytes"):
        check(InputConfig(image_column="url"))
    with pytest.raises(InputLayoutError, match=r"no alt-text column 'alt'"):
        check(InputConfig(text_column="alt"))
    # img2dataset without caption_col: no alt-text column; a job that scores it says so, unless told there is none
    t = pq.read_table(tmp_path / "pq" / "00000.parquet").drop_columns(["caption"])
    pq.write_table(t, tmp_path / "pq" / "00000.parquet")
    with pytest.raises(InputLayoutError, match=r"this job scores the alt-text, and no column holds one \(looked for "
                                               r"caption, txt, text, TEXT, alt_text, alt; .*set input.text_column.*null"):
        check(InputConfig())
    assert check(InputConfig(text_column=None))["parquet"]["text"] is None
    assert check(InputConfig(), alt_text=False)["parquet"]["text"] is None  # caption/prompts need none


def test_the_check_reads_a_tars_first_sample_for_the_alt_text(tmp_path):
    from tests.fixtures.samples import tar_bytes

    img = jpeg(photos(32)[0])
    (tmp_path / "a.tar").write_bytes(tar_bytes({"k1.jpg": img, "k1.json": b'{"alt": "x"}', "k2.jpg": img, "k2.txt": b"y"}))
    firsts: list[Shard] = []
    shards = list_shards([str(tmp_path / "a.tar")], firsts=firsts)
    with pytest.raises(InputLayoutError, match=r"its first sample has no member k1.txt \(members: jpg, json\)"):
        check_inputs(shards, firsts, InputConfig(), {}, alt_text=True)
    assert check_inputs(shards, firsts, InputConfig(text_field="alt"), {}, True)["webdataset"]["text"] == "KEY.json['alt']"
    assert check_inputs(shards, firsts, InputConfig(text_column=None), {}, True)["webdataset"]["text"] is None


def test_a_later_shard_without_the_image_column_fails_uncommitted_not_as_one_row(tmp_path, web):
    img2dataset.write(tmp_path / "pq", web, "parquet")
    pq.write_table(pq.read_table(tmp_path / "pq" / "00001.parquet").drop_columns(["jpg"]), tmp_path / "pq" / "00001.parquet")
    shard = list_shards([str(tmp_path / "pq" / "00001.parquet")])[0]
    (end,) = pa.concat_tables(list(read_shard(shard, InputConfig(), {}))).to_pylist()
    assert end["status"] == SHARD_END and "no column of image bytes" in json.loads(end["meta"])["failed"]


def test_a_folder_of_images_with_a_shard_beside_them_stays_an_image_folder(tmp_path):
    from tests.fixtures.samples import tar_bytes, write_folder

    write_folder(tmp_path / "mix", 3, size=32)
    (tmp_path / "mix" / "old.tar").write_bytes(tar_bytes({}))
    assert [s.format for s in list_shards([str(tmp_path / "mix")])] == ["folder"]


def test_a_later_shard_without_the_named_alt_text_column_fails_uncommitted(tmp_path, web):
    img2dataset.write(tmp_path / "pq", web, "parquet")
    pq.write_table(pq.read_table(tmp_path / "pq" / "00001.parquet").drop_columns(["caption"]), tmp_path / "pq" / "00001.parquet")
    shard = list_shards([str(tmp_path / "pq" / "00001.parquet")])[0]
    (end,) = pa.concat_tables(list(read_shard(shard, InputConfig(text_column="caption"), {}))).to_pylist()
    assert "no alt-text column 'caption'" in json.loads(end["meta"])["failed"]
