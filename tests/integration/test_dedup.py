"""`capfilt dedup` on a real run's output, with planted duplicates: exact copies, re-encodes at other JPEG
qualities, 0.5× and 2× resizes and 10 % crops of some photos among distinct ones."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.cli import main
from tests.fixtures.commands import run
from tests.fixtures.samples import add_member, photos


def encode(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def planted_corpus(folder, n_shards: int = 3) -> dict[str, tuple[str, str | None]]:
    """Distinct photos, and for six of them an exact copy, a re-encode, two resizes and a crop, shuffled
    over shards → key → (kind, the key of its original or None)."""
    distinct = list({p.tobytes(): p for p in photos(384)}.values())  # scikit-image's `cat` is its `chelsea`
    samples: list[tuple[str, bytes, str, str | None]] = []
    for i, arr in enumerate(distinct):
        im = Image.fromarray(arr)
        original = encode(im, 90)
        samples.append((f"p{i:02d}", original, "original", None))
        if i >= 6:
            continue
        w, h = im.size
        variants = {"copy": original, "reencode": encode(im, 60),
                    "half": encode(im.resize((w // 2, h // 2), Image.Resampling.LANCZOS), 90),
                    "double": encode(im.resize((w * 2, h * 2), Image.Resampling.BICUBIC), 85),
                    "crop": encode(im.crop((w // 20, h // 20, w - w // 20, h - h // 20)), 90)}
        samples += [(f"p{i:02d}{kind}", data, kind, f"p{i:02d}") for kind, data in variants.items()]
    order = np.random.default_rng(0).permutation(len(samples))
    folder.mkdir(parents=True)
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for j in order[s::n_shards]:
                key, data, _, _ = samples[j]
                add_member(tar, f"{key}.jpg", data)
                add_member(tar, f"{key}.txt", b"a photo")
    return {key: (kind, of) for key, _, kind, of in samples}


def dedup(out, *sets: str) -> int:
    return main(["dedup", str(out), *(x for s in sets for x in ("--set", s))])


def rows(out) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(out / "dedup").to_pylist()}


def test_exact_and_perceptual_find_every_copy_reencode_and_resize_and_nothing_else(ray_local, tmp_path, capsys):
    truth = planted_corpus(tmp_path / "in")
    assert run("embed", "tiny-embed.yaml", [str(tmp_path / "in" / "*.tar")], str(tmp_path / "out")) == 0
    capsys.readouterr()
    assert dedup(tmp_path / "out", "dedup.semantic=false") == 0
    assert "capfilt dedup:" in capsys.readouterr().out
    got = rows(tmp_path / "out")
    assert sorted(got) == sorted(truth)  # every row of the run, once
    photo = {k: of or k for k, (_, of) in truth.items()}  # the photo each row shows
    flagged = {k for k, r in got.items() if r["method"]}
    for k in flagged:  # precision 1.0: a duplicate shows the photo of the row it points at, and that row stays
        kept = got[k]["duplicate_of"]
        assert photo[kept] == photo[k] and got[kept]["keep"] and got[kept]["method"] is None and got[k]["keep"] is False
    for p in {of for _, of in truth.values() if of}:  # recall 1.0: of original, copy, re-encode, resizes, one stays
        group = [k for k, (kind, _) in truth.items() if photo[k] == p and kind != "crop"]
        assert sum(k not in flagged for k in group) == 1, group
    exact = {k for k in flagged if got[k]["method"] == "exact"}
    assert {photo[k] for k in exact} == {of for _, of in truth.values() if of} and len(exact) == 6
    assert sum(r["keep"] for r in got.values()) == len(truth) - len(flagged)
    summary = json.loads((tmp_path / "out" / "dedup" / "_dedup.json").read_text())
    assert summary["rows"] == len(truth) and summary["duplicates"]["exact"] >= 6


def test_semantic_dedup_on_the_cluster_finds_every_exact_copy_and_a_rerun_resumes(ray_local, tmp_path):
    truth = planted_corpus(tmp_path / "in")
    assert run("embed", "tiny-embed.yaml", [str(tmp_path / "in" / "*.tar")], str(tmp_path / "out")) == 0
    semantic_only = ("dedup.exact=false", "dedup.perceptual=false", "dedup.semantic=true", "dedup.eps=0.0001",
                     "dedup.clusters=3")
    assert dedup(tmp_path / "out", *semantic_only) == 0
    got = rows(tmp_path / "out")
    photo = {k: of or k for k, (_, of) in truth.items()}
    for k, (kind, of) in truth.items():  # of each original and its exact copy, at least one is a semantic duplicate
        if kind == "copy":
            dup = [r for r in (got[k], got[of]) if r["method"] == "semantic"]
            assert dup and all(photo[r["duplicate_of"]] == of and got[r["duplicate_of"]]["keep"] for r in dup)
            assert all(r["similarity"] > 0.999 for r in dup if r["duplicate_of"] in (k, of))
    first = pq.read_table(tmp_path / "out" / "dedup").sort_by("key")
    # cut short: one part and its marker gone; the rerun writes it alone, the same rows
    part = sorted((tmp_path / "out" / "dedup").glob("*.parquet"))[0]
    part.unlink()
    (tmp_path / "out" / "dedup" / "_committed" / f"{part.stem}.json").unlink()
    assert dedup(tmp_path / "out", *semantic_only) == 0
    summary = json.loads((tmp_path / "out" / "dedup" / "_dedup.json").read_text())
    assert (summary["parts_written"], summary["parts_done_before"]) == (1, 2)
    assert pq.read_table(tmp_path / "out" / "dedup").sort_by("key").equals(first)
    assert dedup(tmp_path / "out", *semantic_only) == 0  # all done: nothing written
    assert dedup(tmp_path / "out", "dedup.semantic=true", "dedup.eps=2") == 2  # a bad setting: one line, exit 2


def test_estimate_dedup_runs_a_sample_of_whole_files_elsewhere_and_projects_every_stage(ray_local, tmp_path, capsys):
    planted_corpus(tmp_path / "in", n_shards=4)
    out = tmp_path / "out"
    assert run("embed", "tiny-embed.yaml", [str(tmp_path / "in" / "*.tar")], str(out)) == 0
    markers = [json.loads(p.read_text()) for p in (out / "_committed").glob("*.json")]
    total = sum(m["rows"] for m in markers)
    capsys.readouterr()
    assert main(["estimate", "dedup", "--input", str(out), "--sample", "20", "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert not (out / "dedup").exists()  # the sample ran in a temporary copy: OUT is not written
    assert e["rows"] == total and e["files"] == len(markers) == 4
    per_file = {m["name"]: m["rows"] for m in markers}
    assert e["sample"]["files"] == 2 and 20 <= e["sample"]["rows"] < total  # whole files, at least 20 rows
    assert e["sample"]["rows"] in {a + b for a in per_file.values() for b in per_file.values()}
    small, large = e["sample"]["sizes"]  # the first of the two files, then both: a fixed part told from the rest
    assert small in per_file.values() and large == e["sample"]["rows"]
    st, proj = e["sample"]["stage_seconds"], e["projected"]["stage_seconds"]
    assert {"read", "exact", "perceptual", "semantic_read", "kmeans", "semantic_assign", "semantic_pass",
            "write"} <= set(proj)
    for k in ("read", "exact", "perceptual", "write", "semantic_read", "semantic_assign", "semantic_pass"):
        assert proj[k] >= st[k] - 1e-3  # more rows never take less than the sample took
    assert 0 < e["sample"]["kmeans_fitted_on"] <= large and e["projected"]["clusters"] == 1  # 44 rows: one cluster
    assert e["projected"]["wall_s"] >= sum(proj.values())
    assert main(["estimate", "dedup", "--input", str(out)]) == 0
    assert "capfilt estimate dedup: sample of" in capsys.readouterr().out
    assert main(["estimate", "dedup", "--input", str(out), str(out)]) == 2
    assert "--input takes the one OUT" in capsys.readouterr().err
