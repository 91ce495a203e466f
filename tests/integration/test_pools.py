"""Every GPU of a cluster with no settings: a model stage on GPUs runs Ray Data's autoscaling actor pool, from
one actor up to one per GPU; a fixed `concurrency` still wins. On a local multi-node Ray whose worker nodes
declare GPUs (tests/fixtures/gpu_cluster.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.paths import ROOT
from tests.fixtures.processes import subprocess_env
from tests.fixtures.samples import write_webdataset

TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.mark.slow
def test_a_gpu_stage_grows_to_the_clusters_gpus_and_a_fixed_concurrency_wins(tmp_path, ray_dir):
    keys = write_webdataset(tmp_path / "in", n_shards=12, per_shard=4, size=64)
    script = str(ROOT / "tests" / "fixtures" / "gpu_cluster.py")
    res = subprocess.run([sys.executable, script, str(tmp_path / "in" / "*.tar"), str(tmp_path / "out"), TINY],
                         env=subprocess_env(ray_dir), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    auto, fixed = report["auto"], report["fixed"]
    print(f"autoscaled: {auto['actors']} caption actors for pool {auto['pools']}; fixed: {fixed['actors']}")
    assert auto["rc"] == 0 and fixed["rc"] == 0, auto["stderr"] + fixed["stderr"]
    assert auto["rows"] == fixed["rows"] == len(keys)
    assert auto["pools"] == {"CaptionImages": [1, 4]}  # 2 nodes × 2 GPUs, num_gpus 1: up to 4 actors
    assert 2 <= auto["actors"] <= 4, auto  # it grew while inputs queued, never past the GPUs
    assert fixed["pools"] == {"CaptionImages": [1, 1]} and fixed["actors"] == 1


def test_two_batches_per_actor_write_the_same_outputs_as_one(ray_local, tmp_path):
    """`overlap` (the default: Ray Data gives each model actor two batches at once, on two threads that take
    turns on the device and in the tokenizer) against one batch at a time: the same captions, bit-equal
    embeddings on the CPU."""
    import pyarrow.parquet as pq

    from tests.fixtures.commands import run

    keys = write_webdataset(tmp_path / "in", n_shards=3, per_shard=8, size=64)
    small = ["--set", "input.rows_per_block=4"]
    tables = {}
    for overlap in ("true", "false"):
        out = tmp_path / f"cap-{overlap}"
        assert run("caption", "tiny.yaml", [str(tmp_path / "in" / "*.tar")], str(out), *small,
                   "--set", "caption.batch_size=4", "--set", f"caption.overlap={overlap}") == 0
        emb = tmp_path / f"emb-{overlap}"
        assert run("embed", "tiny-embed.yaml", [str(tmp_path / "in" / "*.tar")], str(emb), *small,
                   "--set", "clip.batch_size=4", "--set", f"clip.overlap={overlap}") == 0
        tables[overlap] = (pq.read_table(out / "captions").sort_by("key"), pq.read_table(emb / "embeddings").sort_by("key"))
    (cap_on, emb_on), (cap_off, emb_off) = tables["true"], tables["false"]
    assert cap_on["key"].to_pylist() == sorted(keys) and cap_on["captions"].to_pylist() == cap_off["captions"].to_pylist()
    for column in ("image_embedding", "text_embedding"):
        assert emb_on[column].to_pylist() == emb_off[column].to_pylist()
