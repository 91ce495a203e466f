"""Region captions and region embeddings of img2dataset shards with boxes in their JSON and a mask member,
through the CLI on a local Ray: one row per sample, per-region lists aligned with `regions`, a bad region
a row status."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from pipeline.cli import main
from pipeline.models.random_weights import ensure_tiny
from tests.fixtures.paths import ROOT
from tests.fixtures.reference import png
from tests.fixtures.samples import tar_bytes


def shard(tmp_path, photos):
    img = photos[2][:120, :160]
    mask = np.zeros((120, 160), np.uint8)
    mask[20:60, 30:90] = 255
    members = {
        "a.png": png(img), "a.txt": b"a photo", "a.json": json.dumps({"regions": [[0, 0, 80, 60], [80, 60, 160, 120]]}).encode(),
        "b.png": png(img), "b.json": json.dumps({"regions": [[0, 0, 80, 60]]}).encode(), "b.mask.png": png(mask),
        "c.png": png(img), "c.json": json.dumps({"url": "no regions"}).encode(),
        "d.png": png(img), "d.json": json.dumps({"regions": [[0, 0, 400, 60]]}).encode(),
    }
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.tar").write_bytes(tar_bytes(members))
    return str(tmp_path / "in" / "00000.tar")


def run(job, config, inputs, out, *extra):
    return main([job, "--input", inputs, "--output", str(out), "--config", str(ROOT / "configs" / config),
                 "--set", "run.progress=none", *extra])


def test_region_captions_and_region_embeddings_through_the_jobs(ray_local, tmp_path, photos):
    inputs = shard(tmp_path, photos)
    assert run("caption", "tiny-florence2.yaml", inputs, tmp_path / "cap", "--set", "caption.max_new_tokens=6") == 0
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "cap" / "captions").to_pylist()}
    assert sorted(rows) == ["a", "b", "c", "d"]
    assert rows["a"]["regions"] == [[0, 0, 80, 60], [80, 60, 160, 120]] and len(rows["a"]["region_captions"]) == 2
    assert rows["b"]["regions"] == [[0, 0, 80, 60], [30, 20, 90, 60]] and len(rows["b"]["region_captions"]) == 2
    assert rows["c"]["regions"] is None and rows["c"]["region_captions"] is None and rows["c"]["caption"]
    assert rows["d"]["status"] == "bad_region" and "outside the 160x120 image" in rows["d"]["error"]
    assert all(isinstance(c, str) for c in rows["a"]["region_captions"])

    assert run("embed", "tiny-embed.yaml", inputs, tmp_path / "emb", "--set", f"clip.model={ensure_tiny('alpha-clip')}") == 0
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "emb" / "embeddings").to_pylist()}
    assert [len(v) for v in rows["a"]["region_embeddings"]] == [24, 24]
    assert len(rows["b"]["region_embeddings"]) == 2 and rows["c"]["region_embeddings"] is None
    assert rows["d"]["status"] == "bad_region" and rows["d"]["image_embedding"] is None
    a, b = (np.array(v, dtype=np.float32) for v in rows["a"]["region_embeddings"])
    assert abs(np.linalg.norm(a) - 1) < 1e-2 and np.abs(a - b).max() > 1e-3
