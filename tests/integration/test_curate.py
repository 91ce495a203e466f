"""Curation signals through the jobs: the aesthetic and NSFW heads on the CLIP image embedding (equal to a
plain PyTorch model of the released layout, here, on the embeddings the run wrote), the hashes of every
decoded image, and `keep` honouring the thresholds (configs/tiny-curate.yaml)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.models.heads import resolve_head
from tests.fixtures.commands import run
from tests.fixtures.samples import write_webdataset


def reference_scores(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two tiny heads of tiny-curate.yaml, as the authors' modules compute them (plain PyTorch)."""
    x = torch.from_numpy(embeddings.astype(np.float32))
    mlp = torch.nn.Sequential(torch.nn.Linear(768, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                              torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
                              torch.nn.Linear(64, 16), torch.nn.Linear(16, 1)).eval()
    mlp.load_state_dict({k.removeprefix("layers."): v for k, v in
                         torch.load(resolve_head("tiny:aesthetic"), weights_only=True).items()})
    nsfw = torch.load(resolve_head("tiny:nsfw"), weights_only=True)
    h = (x - nsfw["norm.mean"]) / nsfw["norm.variance"].sqrt()
    for k in (1, 2, 3):
        h = torch.relu(torch.nn.functional.linear(h, nsfw[f"linear_{k}.weight"], nsfw[f"linear_{k}.bias"]))
    unsafe = torch.sigmoid(torch.nn.functional.linear(h, nsfw["linear_4.weight"], nsfw["linear_4.bias"]))
    with torch.no_grad():
        return mlp(x)[:, 0].numpy(), unsafe[:, 0].numpy()


def test_embed_writes_the_heads_scores_the_hashes_and_keep(ray_local, tmp_path):
    keys = write_webdataset(tmp_path / "in", n_shards=2, per_shard=6, size=96)
    assert run("embed", "tiny-curate.yaml", [str(tmp_path / "in" / "*.tar")], str(tmp_path / "out"),
               "--set", "embed.dtype=float32", "--set", "curate.aesthetic_min=-1000") == 0
    t = pq.read_table(tmp_path / "out" / "embeddings").sort_by("key")
    assert t["key"].to_pylist() == sorted(keys)
    emb = np.stack(t["image_embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    aesthetic, unsafe = reference_scores(emb)
    assert np.abs(t["aesthetic_score"].to_numpy() - aesthetic).max() <= 1e-5
    assert np.abs(t["nsfw_score"].to_numpy() - unsafe).max() <= 1e-5
    assert t["keep"].to_pylist() == [bool(u < 0.5) for u in unsafe]  # every aesthetic score clears -1000
    assert all(len(h) == 16 for h in t["phash"].to_pylist()) and all(len(h) == 64 for h in t["sha256"].to_pylist())


def test_clean_honours_the_thresholds_and_a_head_that_does_not_fit_the_clip_model_stops_it(ray_local, tmp_path, capsys):
    write_webdataset(tmp_path / "in", n_shards=1, per_shard=8, size=96)
    inputs = [str(tmp_path / "in" / "*.tar")]
    assert run("clean", "tiny-curate.yaml", inputs, str(tmp_path / "all"), "--set", "curate.aesthetic_min=null",
               "--set", "curate.nsfw_max=null", "--set", "clean.itm_threshold=0") == 0
    everything = pq.read_table(tmp_path / "all" / "captions").sort_by("key").to_pylist()
    assert all(r["keep"] for r in everything)  # an ITM threshold of 0 passes every text
    cut = float(np.median([r["aesthetic_score"] for r in everything]))
    assert run("clean", "tiny-curate.yaml", inputs, str(tmp_path / "cut"), "--set", f"curate.aesthetic_min={cut}",
               "--set", "curate.nsfw_max=null", "--set", "clean.itm_threshold=0") == 0
    rows = pq.read_table(tmp_path / "cut" / "captions").sort_by("key").to_pylist()
    assert [r["keep"] for r in rows] == [r["aesthetic_score"] >= cut for r in everything]
    assert 0 < sum(r["keep"] for r in rows) < len(rows)
    capsys.readouterr()
    assert run("embed", "tiny-curate.yaml", inputs, str(tmp_path / "bad"), "--set", "clip.model=tiny:clip") == 2
    err = capsys.readouterr().err
    assert "curate.aesthetic" in err and "768-d" in err and "projects to 24-d" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad" / "run.json").exists()
