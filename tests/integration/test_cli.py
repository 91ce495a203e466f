"""Integration: the `capfilt` command end to end on a local Ray, with tiny models of the real classes."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from tests.fixtures.inspection import check_inspect
from tests.fixtures.paths import ROOT  # noqa: E402
from tests.fixtures.samples import jpeg, tar_bytes, write_folder, write_parquet, write_webdataset

TINY = str(ROOT / "configs" / "tiny.yaml")
QUICK = ["--set", "caption.max_new_tokens=6", "--set", "caption.num_beams=2", "--set", "run.progress=log"]


def caption(inputs: list[str], output: str, *extra: str) -> int:
    return main(["caption", "--input", *inputs, "--output", output, "--config", TINY, *QUICK, *extra])


def test_s3_webdataset_end_to_end(ray_local, s3, tmp_path, capsys):
    keys = write_webdataset(tmp_path / "in", n_shards=3, per_shard=5, size=200)
    s3.mkdir("capfilt-test")
    for p in sorted((tmp_path / "in").glob("*.tar")):
        s3.put(str(p), f"capfilt-test/in/{p.name}")
    called = time.perf_counter()
    assert caption(["s3://capfilt-test/in/{00000..00002}.tar"], "s3://capfilt-test/out") == 0
    took = time.perf_counter() - called
    table = pq.read_table("capfilt-test/out/captions", filesystem=s3)
    assert sorted(table["key"].to_pylist()) == sorted(keys)  # every key exactly once
    assert set(table["status"].to_pylist()) == {"ok"}
    assert all(c for c in table["caption"].to_pylist())
    assert set(table["source"].to_pylist()) == {f"s3://capfilt-test/in/{i:05d}.tar" for i in range(3)}
    assert table["text"].to_pylist()[0]
    run = json.loads(s3.cat_file("capfilt-test/out/run.json"))
    assert run["rows"] == 15 and run["counts"] == {"ok": 15} and run["images_per_s"] > 0
    # main() called by a running program: its time counts from the call, not from this process's start
    assert "interpreter_imports" not in run["phases"] and 0 < run["seconds"] <= took
    assert run["models"]["caption"] == "tiny:blip" and "ray" in run["versions"]
    from pipeline.models.loading import directory_revision
    from pipeline.models.random_weights import ensure_tiny

    assert run["revisions"]["caption"] == directory_revision(str(ensure_tiny("blip")))  # the model's content hash
    assert "15 rows (ok=15)" in capsys.readouterr().out
    got = check_inspect("capfilt-test/out", capsys, fs=s3)
    assert got["job"] == "caption" and got["ok_fraction"] == 1.0 and "scores" not in got
    # caption flags: one list per candidate; run.json's counts are the Parquet's
    from collections import Counter

    from pipeline.models.flags import FLAGS

    flags = table["caption_flags"].to_pylist()
    assert all(len(f) == len(c) for f, c in zip(flags, table["captions"].to_pylist(), strict=True))
    counted = Counter(flag for per_row in flags for candidate in per_row for flag in candidate)
    assert set(counted) <= set(FLAGS) and counted["truncated"] > 0  # a random tiny model rarely says [SEP]
    assert run["caption_flags"] == dict(sorted(counted.items())) == run["totals"]["caption_flags"]


def test_parquet_input(ray_local, tmp_path):
    keys = write_parquet(tmp_path / "in" / "part-0.parquet", 9, size=128)
    keys += write_parquet(tmp_path / "in2" / "part-1.parquet", 1, size=128)
    keys[-1:] = ["p000000"]  # same key in another file: both rows are kept, one per source
    assert caption([str(tmp_path / "in" / "*.parquet"), str(tmp_path / "in2" / "part-1.parquet")],
                   str(tmp_path / "out")) == 0
    table = pq.read_table(tmp_path / "out" / "captions")
    assert table.num_rows == 10
    assert sorted(table["key"].to_pylist()) == sorted(keys)
    assert set(table["status"].to_pylist()) == {"ok"} and all(table["caption"].to_pylist())


def test_image_folder_matches_the_reference_captions(ray_local, tmp_path, tiny_blip):
    from tests.fixtures.reference import reference_captions

    keys = write_folder(tmp_path / "imgs", 8, size=160)
    assert caption([str(tmp_path / "imgs")], str(tmp_path / "out"), "--set", "decode.draft=false", "--set", "decode.fast=false",
                   "--set", "caption.strategy=greedy") == 0
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "captions").to_pylist()}
    assert sorted(rows) == sorted(keys)
    images = [Image.open(tmp_path / "imgs" / f"{k}.jpg").convert("RGB") for k in keys]
    ref = reference_captions(tiny_blip, images, max_new_tokens=6, min_new_tokens=3)
    assert [rows[k]["caption"] for k in keys] == ref
    assert rows["sub/img000"]["text"] and rows["img001"]["text"] is None


def test_bad_samples_become_rows_and_the_job_exits_0(ray_local, tmp_path, photos):
    good = jpeg(photos[0])
    truncated = jpeg(photos[1])[:600]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.tar").write_bytes(tar_bytes({
        "a.jpg": good, "a.txt": b"fine",
        "b.jpg": truncated, "b.txt": b"truncated",
        "c.jpg": b"", "c.txt": b"zero bytes",
        "d.jpg": b"<html>not an image</html>",
        "e.jpg": good,
    }))
    (tmp_path / "in" / "00001.tar").write_bytes(tar_bytes({"f.jpg": good}))
    assert caption([str(tmp_path / "in" / "*.tar")], str(tmp_path / "out")) == 0
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "captions").to_pylist()}
    assert {k: r["status"] for k, r in rows.items()} == {
        "a": "ok", "b": "decode_error", "c": "decode_error", "d": "unsupported_format", "e": "ok", "f": "ok"}
    assert "truncated" in rows["b"]["error"].lower() and rows["b"]["caption"] is None and rows["a"]["caption"]


def test_rerun_after_completion_does_nothing(ray_local, tmp_path, capsys):
    write_webdataset(tmp_path / "in", n_shards=2, per_shard=3, size=64)
    out = tmp_path / "out"
    assert caption([str(tmp_path / "in" / "*.tar")], str(out)) == 0
    first = {p.name: p.stat().st_mtime_ns for p in (out / "captions").iterdir()}
    capsys.readouterr()
    assert caption([str(tmp_path / "in" / "*.tar")], str(out)) == 0
    assert "0 rows (none) from 0 shards (2 already done)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "captions").iterdir()} == first
    # Another model or threshold must never mix with these rows.
    assert caption([str(tmp_path / "in" / "*.tar")], str(out), "--set", "caption.num_beams=3") == 2
    assert "written with another config" in capsys.readouterr().err


def test_the_same_shard_stem_from_two_folders_into_one_output_keeps_both(ray_local, tmp_path, capsys):
    """x/00000.tar, then in a later run y/00000.tar, into one output: both kept, nothing overwritten, and
    the output's totals (run.json) equal the sum of the markers and a read-back of the Parquet."""
    kx = write_webdataset(tmp_path / "x", n_shards=1, per_shard=3, size=64)
    ky = [f"y{k}" for k in kx]
    with tarfile.open(tmp_path / "x" / "00000.tar") as src:  # same stem, other keys
        (tmp_path / "y").mkdir()
        with tarfile.open(tmp_path / "y" / "00000.tar", "w") as dst:
            for m in src.getmembers():
                data = src.extractfile(m).read()
                m.name = "y" + m.name
                dst.addfile(m, io.BytesIO(data))
    out = tmp_path / "out"
    assert caption([str(tmp_path / "x" / "00000.tar")], str(out)) == 0
    first = {p.name: p.read_bytes() for p in (out / "captions").iterdir()}
    assert caption([str(tmp_path / "y" / "00000.tar")], str(out)) == 0
    files = {p.name: p.read_bytes() for p in (out / "captions").iterdir()}
    assert len(files) == 2 and all(files[n] == b for n, b in first.items())  # the first shard's file untouched
    table = pq.read_table(out / "captions")
    assert sorted(table["key"].to_pylist()) == sorted(kx + ky)
    markers = [json.loads(p.read_text()) for p in (out / "_committed").iterdir()]
    assert sorted(m["source"] for m in markers) == sorted([str(tmp_path / d / "00000.tar") for d in "xy"])
    assert all(m["size"] == Path(m["source"]).stat().st_size for m in markers)
    totals = json.loads((out / "run.json").read_text())["totals"]
    assert totals["rows"] == sum(m["rows"] for m in markers) == table.num_rows == 6
    assert totals["shards_committed"] == 2 and totals["counts"] == {"ok": 6}
    assert "holds 6 rows (ok=6) from 2 committed shards" in capsys.readouterr().out  # the end line says the same


def test_a_folder_of_1000_files_is_committed_in_parts(ray_local, tmp_path):
    """1,000 images in a folder, 250 per shard: four shards, each committed on its own, every key once."""
    import numpy as np

    from tests.fixtures.samples import jpeg

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1000):
        (folder / f"{i:04d}.jpg").write_bytes(jpeg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
    out = tmp_path / "out"
    assert caption([str(folder)], str(out), "--set", "input.files_per_shard=250", "--set", "output.rows_per_part=100",
                   "--set", "caption.strategy=greedy",
                   "--set", "caption.max_new_tokens=3", "--set", "caption.min_new_tokens=1", "--set", "caption.batch_size=64",
                   "--set", "input.rows_per_block=64") == 0
    markers = sorted(json.loads(p.read_text())["source"] for p in (out / "_committed").iterdir())
    assert markers == [f"{folder}#part-{k:05d}" for k in range(4)]
    table = pq.read_table(out / "captions")
    assert sorted(table["key"].to_pylist()) == [f"{i:04d}" for i in range(1000)]
    assert len(list((out / "captions").iterdir())) == 4
    assert not (out / "_staging").exists() or not list((out / "_staging").iterdir())  # no part left behind


def test_bad_config_and_inputs_exit_2_with_one_line(tmp_path, capsys):
    assert caption([str(tmp_path)], str(tmp_path / "o"), "--set", "caption.num_beams=x") == 2
    err = capsys.readouterr().err.strip()
    assert err == "capfilt: config: caption.num_beams: expected int, got 'x'"
    assert caption([str(tmp_path / "nothing-{0..1}.tar")], str(tmp_path / "o")) == 2
    assert "matched nothing" in capsys.readouterr().err


def test_help_is_fast_and_lists_jobs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "caption" in capsys.readouterr().out


def test_jpeg_with_exif_rotation_reports_display_size(ray_local, tmp_path, photos):
    im = Image.fromarray(photos[0][:, :200])
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "r.jpg").write_bytes(buf.getvalue())
    assert caption([str(tmp_path / "in")], str(tmp_path / "out")) == 0
    row = pq.read_table(tmp_path / "out" / "captions").to_pylist()[0]
    assert (row["width"], row["height"]) == (im.height, im.width)


def test_rates_below_one_image_per_second_keep_their_digits():
    from pipeline.runner.progress import fmt_rate

    assert fmt_rate(181.64) == "181.6"
    assert fmt_rate(0.0433) == "0.0433"  # a full-size model on a CPU: not "0.0 img/s"


def test_inspect_refuses_what_is_not_an_output_in_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith("holds no run.json and no committed shards: not a capfilt output")
    assert main(["inspect", str(tmp_path), "--keep", "1.5"]) == 2
    assert "--keep must be a fraction in (0, 1], got 1.5" in capsys.readouterr().err


def test_estimate_projects_the_whole_run_from_a_sample(ray_local, tmp_path, capsys):
    write_parquet(tmp_path / "in" / "a.parquet", 40, size=64)
    write_parquet(tmp_path / "in" / "b.parquet", 40, size=64)
    capsys.readouterr()
    assert main(["estimate", "caption", "--input", str(tmp_path / "in" / "*.parquet"), "--config", TINY, *QUICK,
                 "--sample", "16", "--actors", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["input"] == {"shards": 2, "images": 80, "counted_by": "Parquet footers"}
    assert d["sample"]["images"] == 16 and d["sample"]["startup_s"] > 0
    stages = d["stages"]
    assert any("DecodeImages" in op for op in stages) and stages["MapBatches(CaptionImages)"]["model"] is True
    assert d["bottleneck"] == min(stages, key=lambda op: stages[op]["capacity_img_s"])
    p = d["projected"]
    rates = {op: st["img_s_per_worker"] * (3 if st["model"] else st["workers"]) for op, st in stages.items()}
    assert p["actors"] == 3 and p["img_s"] == pytest.approx(min(rates.values())) and p["bottleneck"] == min(rates, key=rates.get)
    assert p["wall_s"] == pytest.approx(d["sample"]["startup_s"] + 80 / p["img_s"])
    assert d["as_sampled"]["wall_s"] > d["sample"]["startup_s"]
    assert main(["estimate", "caption", "--input", str(tmp_path / "in" / "*.parquet"), "--sample", "0"]) == 2
    assert "--sample must be at least 1" in capsys.readouterr().err
