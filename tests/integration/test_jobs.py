"""Integration: clean, embed and prompts through the CLI on a local Ray, with tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tests.fixtures.commands import run
from tests.fixtures.inspection import check_inspect
from tests.fixtures.samples import samples, tar_bytes

JUNK = ["click here", "IMG_2031.JPG", "buy now free shipping", "", "lorem ipsum dolor"]


def write_shards(out: Path, n_shards: int, per_shard: int) -> list[str]:
    """img2dataset shards whose alt-texts are partly junk (and some missing), plus one broken image."""
    out.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(n_shards):
        members = {}
        for i, (img, text) in enumerate(samples(per_shard, s * per_shard, size=96)):
            key = f"{s:05d}{i:04d}"
            members[f"{key}.jpg"] = img if (s, i) != (0, 1) else img[:200]
            if i % 4 != 3:
                members[f"{key}.txt"] = (text if i % 2 == 0 else JUNK[i % len(JUNK)]).encode()
            keys.append(key)
        (out / f"{s:05d}.tar").write_bytes(tar_bytes(members))
    return keys


def passes(row: dict, j: int | None, thresholds: dict[str, float]) -> bool:
    for kind, thr in thresholds.items():
        s = row[f"{kind}_text_score"] if j is None else row[f"{kind}_caption_scores"][j]
        if s is None or s < thr:
            return False
    return True


def test_clean_on_s3_is_consistent_and_writes_embeddings_in_the_same_pass(ray_local, s3, tmp_path, capsys):
    keys = write_shards(tmp_path / "in", n_shards=3, per_shard=6)
    s3.mkdir("capfilt-clean")
    for p in sorted((tmp_path / "in").glob("*.tar")):
        s3.put(str(p), f"capfilt-clean/in/{p.name}")
    thresholds = {"itm": 0.5, "clip": 0.0}
    assert run("clean", "tiny-clean.yaml", ["s3://capfilt-clean/in/{00000..00002}.tar"], "s3://capfilt-clean/out",
               "--embed") == 0
    rows = pq.read_table("capfilt-clean/out/captions", filesystem=s3).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(keys)  # every key exactly once
    by_key = {r["key"]: r for r in rows}
    assert by_key["000000001"]["status"] == "decode_error" and by_key["000000001"]["keep"] is None
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(keys) - 1
    for r in ok:
        assert len(r["captions"]) == 3 and len(r["caption_scores"]) == 3 == len(r["clip_caption_scores"])
        assert r["caption_scores"] == r["itm_caption_scores"] and r["text_score"] == r["itm_text_score"]
        options = ([(r["itm_text_score"], r["text"], passes(r, None, thresholds))] if r["text"] else [])
        pairs = enumerate(zip(r["itm_caption_scores"], r["captions"], strict=True))
        options += [(s, c, passes(r, j, thresholds)) for j, (s, c) in pairs]
        passing = [o for o in options if o[2]]
        assert r["keep"] == bool(passing)  # keep is false exactly when nothing passes
        assert r["keep_text"] == (bool(r["text"]) and passes(r, None, thresholds))
        if passing:
            best = max(o[0] for o in passing)
            assert r["caption"] in [o[1] for o in passing if o[0] == best]  # max passing score
        else:
            assert r["caption"] is None
    assert any(r["keep"] for r in ok) and not all(r["keep"] for r in ok), "the test data should split"
    emb = pq.read_table("capfilt-clean/out/embeddings", filesystem=s3)
    assert sorted(emb["key"].to_pylist()) == sorted(keys)
    assert emb.schema.field("image_embedding").type == pa.list_(pa.float16(), 24)
    vecs = np.array([v for v in emb["image_embedding"].to_pylist() if v is not None], dtype=np.float32)
    assert len(vecs) == len(ok) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=2e-3)
    texts = {r["key"]: r["text"] for r in rows}
    for k, t in zip(emb["key"].to_pylist(), emb["text_embedding"].to_pylist(), strict=True):
        assert (t is not None) == (bool(texts[k]) and by_key[k]["status"] == "ok")
    run_json = json.loads(s3.cat_file("capfilt-clean/out/run.json"))
    assert set(run_json["models"]) == {"caption", "itm", "clip"}
    got = check_inspect("capfilt-clean/out", capsys, fs=s3)
    assert set(got["scores"]) == {"itm", "itc", "clip"} and got["ranked_by"] == "itm"
    assert got["tables"]["embeddings"]["embeddings"] == ["image_embedding", "text_embedding"]


def test_clean_top_fraction_keeps_the_requested_share(ray_local, tmp_path, capsys):
    write_shards(tmp_path / "in", n_shards=4, per_shard=5)
    out = tmp_path / "out"
    assert run("clean", "tiny-clean.yaml", [str(tmp_path / "in" / "*.tar")], str(out),
               "--set", "clean.mode=top_fraction", "--set", "clean.fraction=0.3",
               "--set", "clean.scorers=[clip]", "--set", "clean.rank_by=clip") == 0
    df = pd.read_parquet(out / "captions")
    ok = df[df.status == "ok"]
    assert ok.keep.notna().all() and df[df.status != "ok"].keep.isna().all()
    kept = ok.keep.astype(bool)
    target = round(0.3 * len(ok))
    assert abs(int(kept.sum()) - target) <= 4  # within one row per shard of rounding
    best = ok.apply(lambda r: max(([r.text_score] if pd.notna(r.text_score) else []) + list(r.caption_scores)), axis=1)
    assert best[kept].min() >= best[~kept].max()  # the kept rows are the top scores
    assert ok[~kept].caption.isna().all() and ok[kept].caption.notna().all()
    sel = json.loads((out / "_selection.json").read_text())
    assert sel["target_rows"] == target and sel["kept_rows"] == int(kept.sum())
    # A rerun finds everything committed and the selection done: nothing changes.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "captions").iterdir()}
    assert run("clean", "tiny-clean.yaml", [str(tmp_path / "in" / "*.tar")], str(out),
               "--set", "clean.mode=top_fraction", "--set", "clean.fraction=0.3",
               "--set", "clean.scorers=[clip]", "--set", "clean.rank_by=clip") == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "captions").iterdir()} == before
    got = check_inspect(str(out), capsys)  # the selection rewrote every file: its sketches are still there
    assert got["keep"]["rows"] == int(kept.sum()) and len(got["runs"]) == 2


def test_embed_job_float16_and_float32(ray_local, tmp_path, capsys):
    keys = write_shards(tmp_path / "in", n_shards=1, per_shard=6)
    for dtype, arrow in [("float16", pa.float16()), ("float32", pa.float32())]:
        out = tmp_path / f"out-{dtype}"
        assert run("embed", "tiny-embed.yaml", [str(tmp_path / "in" / "00000.tar")], str(out),
                   "--set", f"embed.dtype={dtype}") == 0
        t = pq.read_table(out / "embeddings")
        assert sorted(t["key"].to_pylist()) == sorted(keys)
        assert t.schema.field("image_embedding").type == pa.list_(arrow, 24)
        df = t.to_pandas()
        ok = df[df.status == "ok"]
        assert len(ok) == 5 and df[df.status != "ok"].image_embedding.isna().all()
        norms = np.linalg.norm(np.stack(ok.image_embedding.to_list()).astype(np.float32), axis=1)
        assert np.allclose(norms, 1, atol=2e-3)
        assert check_inspect(str(out), capsys, table="embeddings")["tables"]["embeddings"]["embeddings"] == [
            "image_embedding", "text_embedding"]
    # The README's one-liners: the output opens as it is in polars and duckdb too.
    import duckdb
    import polars as pl

    assert pl.read_parquet(f"{out}/embeddings/*.parquet").height == len(keys)
    assert duckdb.sql(f"select count(*) from '{out}/embeddings/*.parquet' where status = 'ok'").fetchall()[0][0] == 5


def test_prompts_submission_matches_the_embeddings_table(ray_local, tmp_path, capsys):
    keys = write_shards(tmp_path / "in", n_shards=2, per_shard=4)
    out, csv = tmp_path / "out", tmp_path / "submission.csv"
    assert run("prompts", "tiny-prompts.yaml", [str(tmp_path / "in" / "*.tar")], str(out),
               "--submission", str(csv)) == 0
    sub = pd.read_csv(csv)
    assert list(sub.columns) == ["imgId_eId", "val"]
    assert len(sub) == len(keys) * 384
    emb = pq.read_table(out / "embeddings").to_pandas().sort_values("key")
    assert sub.imgId_eId.iloc[0] == f"{sorted(keys)[0]}_0" and sub.imgId_eId.iloc[383] == f"{sorted(keys)[0]}_383"
    expected = np.stack([v if v is not None else np.zeros(384) for v in emb.prompt_embedding]).ravel()
    np.testing.assert_allclose(sub.val.to_numpy(), expected, atol=1e-6)
    ok = emb[emb.prompt_embedding.notna()]
    assert len(ok) == len(keys) - 1  # the broken image has no caption, hence no prompt embedding
    norms = np.linalg.norm(np.stack(ok.prompt_embedding.to_list()), axis=1)
    assert np.allclose(norms, 1, atol=1e-4)
    got = check_inspect(str(out), capsys)
    assert got["tables"]["embeddings"]["embeddings"] == ["prompt_embedding"] and "scores" not in got


def test_clean_keep_fraction_calibrates_on_the_first_shards_and_applies_it_as_it_streams(ray_local, tmp_path, capsys):
    """mode keep_fraction: the first 2 of 4 shards are held, the ITM threshold that keeps 30 % of their
    alt-texts is found and recorded, and every shard is decided by it as `threshold` mode would."""
    write_shards(tmp_path / "in", n_shards=4, per_shard=6)
    out = tmp_path / "out"
    args = ("--set", "clean.mode=keep_fraction", "--set", "clean.fraction=0.3", "--set", "clean.calibration_shards=2",
            "--set", "clean.scorers=[itm]", "--set", "output.rows_per_part=2")  # held shards spill parts too
    assert run("clean", "tiny-clean.yaml", [str(tmp_path / "in" / "*.tar")], str(out), *args) == 0
    cal = json.loads((out / "_calibration.json").read_text())
    t = cal["threshold"]
    assert cal["shards"] == 2 == len(cal["sources"]) and cal["mode"] == "keep_fraction" and 0 < cal["bound"] < 1
    df = pd.read_parquet(out / "captions")
    ok = df[df.status == "ok"]
    calibrated = ok[ok.source.isin(cal["sources"]) & ok.text_score.notna()]
    assert len(calibrated) == cal["scored_alt_texts"]
    assert (calibrated.text_score >= t).sum() == round(0.3 * len(calibrated)) == cal["kept_in_calibration"]
    for r in ok.to_dict("records"):  # every shard, held or not, decided by the calibrated threshold
        passing = ([(r["text_score"], r["text"])] if pd.notna(r["text_score"]) and r["text_score"] >= t else [])
        passing += [(s, c) for s, c in zip(r["caption_scores"], r["captions"], strict=True) if s >= t]
        assert r["keep_text"] == (pd.notna(r["text_score"]) and r["text_score"] >= t), r["key"]
        assert r["keep"] == bool(passing)
        assert (r["caption"] == max(passing)[1]) if passing else pd.isna(r["caption"])
    assert df[df.status != "ok"].keep.isna().all()
    # a rerun finds every shard committed and the threshold recorded: nothing changes
    assert run("clean", "tiny-clean.yaml", [str(tmp_path / "in" / "*.tar")], str(out), *args) == 0
    assert json.loads((out / "_calibration.json").read_text()) == cal
    check_inspect(str(out), capsys)
