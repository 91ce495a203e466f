"""Real datasets in, as their tools write them, through the CLI: img2dataset 1.47's Parquet (alt-text in
`caption`, failed downloads as rows) and Hugging Face `datasets`' image Parquet, with no column settings;
columns that do not fit stop the run before Ray starts; the outputs open in `datasets` too."""

from __future__ import annotations

import json
import logging

import pyarrow.parquet as pq
import pytest

from tests.fixtures import img2dataset
from tests.fixtures.commands import run
from tests.fixtures.img2dataset import NOT_AN_IMAGE, NOT_FOUND
from tests.fixtures.samples import ALT_TEXTS, photos


@pytest.fixture
def no_ray(monkeypatch):
    """A run that reaches Ray fails the test: what these runs get wrong must stop before it."""
    from pipeline.runner import ray_start

    def refuse(cfg):  # type: ignore[no-untyped-def]
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_start, "init_ray", refuse)


def test_clean_on_img2dataset_parquet_scores_every_alt_text(ray_local, tmp_path, caplog):
    web = img2dataset.web_samples(12, {2: NOT_FOUND, 9: NOT_AN_IMAGE})
    meta = img2dataset.write(tmp_path / "in", web, "parquet")
    with caplog.at_level(logging.INFO, logger="capfilt"):
        assert run("clean", "tiny-clean.yaml", [str(tmp_path / "in" / "*")], str(tmp_path / "out")) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "capfilt"]
    assert "reading 2 shard(s): parquet: image jpg, alt-text caption, key key (from 00000.parquet)" in said
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "captions").to_pylist()}
    assert sorted(rows) == sorted(meta)  # every sample once, the failed downloads too
    for key, m in meta.items():
        r = rows[key]
        assert r["text"] == (m["caption"] or None)
        if m["status"] == "success":
            assert r["status"] == "ok" and (r["width"], r["height"]) == (m["width"], m["height"])
            assert (r["text_score"] is not None) == bool(m["caption"])  # every alt-text scored
        else:
            assert r["status"] == "missing_image" and r["error"] == f"{m['status']}: {m['error_message']}"
    scored = [r for r in rows.values() if r["text_score"] is not None]
    assert len(scored) == sum(1 for m in meta.values() if m["status"] == "success" and m["caption"]) >= 6
    report = json.loads((tmp_path / "out" / "run.json").read_text())
    assert report["input_columns"] == {"parquet": {"image": "jpg", "text": "caption", "key": "key", "from": "00000.parquet"}}
    marker = json.loads(next((tmp_path / "out" / "_committed").glob("*.json")).read_text())
    assert marker["columns"] == {"image": "jpg", "text": "caption", "key": "key"}


def test_caption_and_clean_on_hugging_face_image_parquet_with_no_column_settings(ray_local, tmp_path):
    import datasets
    from PIL import Image

    ph = photos(96)
    texts = list(ALT_TEXTS[:5])
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(p) for p in ph[:5]] + [None], "text": texts + ["gone"]},
                                    features=features)
    ds.to_parquet(str(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet"))
    keys = [f"train-00000-of-00001/{i:09d}" for i in range(6)]
    for job, config in [("caption", "tiny.yaml"), ("clean", "tiny-clean.yaml")]:
        out = tmp_path / f"out-{job}"
        # the dataset's folder, as `datasets` and the Hub lay it out: its Parquet shards, not a folder of images
        assert run(job, config, [str(tmp_path / "hf" / "data")], str(out)) == 0
        rows = pq.read_table(out / "captions").to_pylist()
        assert [r["key"] for r in rows] == keys  # every sample one row
        assert [r["status"] for r in rows] == ["ok"] * 5 + ["missing_image"]
        assert [r["text"] for r in rows] == texts + ["gone"]
        assert all(r["captions"] if job == "clean" else r["caption"] for r in rows[:5])
        assert [(r["width"], r["height"]) for r in rows[:5]] == [
            (p.shape[1], p.shape[0]) for p in ph[:5]]
        if job == "clean":
            assert all(r["text_score"] is not None for r in rows[:5])


def test_columns_that_do_not_fit_stop_the_run_before_ray_in_one_line(no_ray, tmp_path, capsys):
    web = img2dataset.web_samples(8, {2: NOT_FOUND})
    img2dataset.write(tmp_path / "in", web, "parquet")
    out = tmp_path / "out"
    assert run("caption", "tiny.yaml", [str(tmp_path / "in" / "*.parquet")], str(out), "--set", "input.image_column=image") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"capfilt: input {tmp_path / 'in' / '00000.parquet'}: no image column 'image' "
                                               "(columns: similarity (double), caption (string), url (string)")
    assert err[0].endswith("jpg (binary)); set input.image_column to the column of image bytes, or 'auto'")
    assert not (out / "_committed").exists() and not (out / "captions").exists()  # nothing committed
    assert run("caption", "tiny.yaml", [str(tmp_path / "in" / "*.parquet")], str(out), "--set", "input.image_column=url") == 2
    assert "input.image_column 'url' holds string, not image bytes" in capsys.readouterr().err
    # img2dataset run without caption_col: no alt-text; `clean` scores it, so it says so (and `caption` runs on)
    pq.write_table(pq.read_table(tmp_path / "in" / "00000.parquet").drop_columns(["caption"]), tmp_path / "in" / "00000.parquet")
    assert run("clean", "tiny-clean.yaml", [str(tmp_path / "in" / "*.parquet")], str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this job scores the alt-text, and no column holds one" in err[0]
    assert "set input.text_column=null if the input has no alt-text" in err[0]
    assert run("embed", "tiny-embed.yaml", [str(tmp_path / "in" / "*.parquet")], str(out)) == 2  # embed.text: true
    assert "no column holds one" in capsys.readouterr().err


def test_outputs_open_in_hugging_face_datasets(ray_local, tmp_path):
    """The README's one-liners: `datasets.load_dataset("parquet", ...)` on a run's tables, beside pandas/polars/duckdb
    (tests/integration/test_jobs.py): the same rows, the embeddings as lists of the table's width."""
    import datasets

    web = img2dataset.web_samples(6, {1: NOT_FOUND})
    img2dataset.write(tmp_path / "in", web, "webdataset")
    out = tmp_path / "out"
    assert run("clean", "tiny-clean.yaml", [str(tmp_path / "in" / "*.tar")], str(out), "--embed") == 0
    caps = datasets.load_dataset("parquet", data_files=f"{out}/captions/*.parquet", split="train",
                                 cache_dir=str(tmp_path / "hf-cache"))
    table = pq.read_table(out / "captions")
    assert caps.num_rows == table.num_rows == 5 and sorted(caps["key"]) == sorted(table["key"].to_pylist())
    assert caps.features["keep"] == datasets.Value("bool")
    emb = datasets.load_dataset("parquet", data_files=f"{out}/embeddings/*.parquet", split="train",
                                cache_dir=str(tmp_path / "hf-cache"))
    width = pq.read_schema(next((out / "embeddings").glob("*.parquet"))).field("image_embedding").type.list_size
    assert emb.num_rows == 5 and all(len(e) == width for e in emb["image_embedding"] if e is not None)


def test_many_small_shards_share_read_tasks_and_each_commits_once(ray_local, tmp_path):
    """40 shards of 2 images: packed into fewer read tasks (ray_adapter.pack), each shard still read,
    committed and counted on its own; a broken shard among them is its own rows, not its task's."""
    from tests.fixtures.accounting import check_accounting
    from tests.fixtures.samples import write_webdataset

    keys = write_webdataset(tmp_path / "in", n_shards=40, per_shard=2, size=64)
    broken = tmp_path / "in" / "00017.tar"
    broken.write_bytes(broken.read_bytes()[:700])  # cut inside the first sample's image
    assert run("caption", "tiny.yaml", [str(tmp_path / "in" / "*.tar")], str(tmp_path / "out"),
               "--set", "caption.max_new_tokens=3") == 0
    summary = json.loads((tmp_path / "out" / "run.json").read_text())
    read = next(v for k, v in summary["stages"].items() if k.startswith("ReadReadShards"))
    assert read["tasks"] < 40
    rows_in = {str(tmp_path / "in" / f"{s:05d}.tar"): 2 for s in range(40)}
    rows_in[str(broken)] = 1
    check_accounting(str(tmp_path / "out"), rows_in=rows_in)
    rows = pq.read_table(tmp_path / "out" / "captions").to_pylist()
    assert {r["key"] for r in rows if r["status"] == "ok"} == set(keys) - {"000170000", "000170001"}
    (bad,) = [r for r in rows if r["source"] == str(broken)]
    assert bad["status"] == "read_error"
