"""Where models come from, and the revision run.json records for each: a directory's content hash, or
the hub commit the local Hugging Face cache resolved."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from pipeline.config import load_config
from pipeline.models.loading import directory_revision, resolve_checked
from pipeline.models.random_weights import ensure_tiny


def test_a_directory_revision_is_a_content_hash(tmp_path):
    shutil.copytree(ensure_tiny("clip"), tmp_path / "m")
    first = directory_revision(str(tmp_path / "m"))
    assert first.startswith("sha256:") and first == directory_revision(str(tmp_path / "m"))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["projection_dim"] += 1
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    assert directory_revision(str(tmp_path / "m")) != first


def test_a_tiny_model_resolves_to_its_directory_and_hash():
    cfg = load_config(None, ["caption.model=tiny:blip"])
    path, revision = resolve_checked("caption", cfg.caption)
    assert path == str(ensure_tiny("blip")) and revision == directory_revision(path)


PROBE = """
import sys
from pipeline.config import load_config
from pipeline.models.loading import resolve_checked
cfg = load_config(None, ["clip.model=capfilt-test/tiny-clip"])
print(resolve_checked("clip", cfg.clip)[1])
"""


def test_a_hub_id_in_the_local_cache_records_its_commit(tmp_path):
    """A hub model as `hf download` leaves it in the cache (snapshots/<commit>, refs/main), offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--capfilt-test--tiny-clip"
    shutil.copytree(ensure_tiny("clip"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == commit
