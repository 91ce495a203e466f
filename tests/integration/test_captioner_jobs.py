"""Every captioner family in every job (caption, prompts, clean), through the CLI on a local Ray: the
same captions as the plain transformers code of each model card."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from tests.fixtures.paths import ROOT
from tests.fixtures.reference import FAMILIES, pngs, reference


def run(job: str, config: str, inputs: str, output: Path, *extra: str) -> int:
    return main([job, "--input", inputs, "--output", str(output), "--config", str(ROOT / "configs" / config),
                 "--set", "decode.fast=false", "--set", "run.progress=none", *extra])


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_in_every_job(ray_local, tmp_path, photos, name):
    datas = pngs(photos, 3)
    (tmp_path / "in").mkdir()
    for i, d in enumerate(datas):
        (tmp_path / "in" / f"img{i}.png").write_bytes(d)
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
    model = ["--set", f"caption.model=tiny:{name}", "--set", "caption.max_new_tokens=6", "--set", "caption.min_new_tokens=3"]
    # caption: beam search
    assert run("caption", "tiny.yaml", str(tmp_path / "in"), tmp_path / "cap", *model, "--set", "caption.num_beams=2") == 0
    got = {r["key"]: r["caption"] for r in pq.read_table(tmp_path / "cap" / "captions").to_pylist()}
    ref = reference(name, images, num_beams=2, do_sample=False, max_new_tokens=6, min_new_tokens=3)
    assert [got[f"img{i}"] for i in range(3)] == ref
    # prompts: beam 3 (the job's default), then the sentence embedding of that caption
    assert run("prompts", "tiny-prompts.yaml", str(tmp_path / "in"), tmp_path / "pr", *model) == 0
    got = {r["key"]: r["caption"] for r in pq.read_table(tmp_path / "pr" / "captions").to_pylist()}
    ref = reference(name, images, num_beams=3, do_sample=False, max_new_tokens=6, min_new_tokens=3)
    assert [got[f"img{i}"] for i in range(3)] == ref
    # clean: greedy candidates here, so the reference is exact; they are scored and selected (images without
    # alt-text: the config says so, or the run stops before Ray)
    assert run("clean", "tiny-clean.yaml", str(tmp_path / "in"), tmp_path / "cl", *model,
               "--set", "caption.strategy=greedy", "--set", "caption.num_captions=1", "--set", "input.text_column=null") == 0
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "cl" / "captions").to_pylist()}
    ref = reference(name, images, num_beams=1, do_sample=False, max_new_tokens=6, min_new_tokens=3)
    assert [rows[f"img{i}"]["captions"] for i in range(3)] == [[c] for c in ref]
    assert all(len(rows[f"img{i}"]["itm_caption_scores"]) == 1 for i in range(3))
