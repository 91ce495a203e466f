"""`capfilt inspect OUT --html`: the report of a tiny clean run, checked as a file and in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.fixtures.commands import run
from tests.integration.test_jobs import write_shards

SECTIONS = ("summary", "histograms", "gallery", "heatmap", "gradcam")


def browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def report(ray_local, tmp_path_factory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("report")
    write_shards(tmp / "in", n_shards=2, per_shard=8)
    out = tmp / "out"
    assert run("clean", "tiny-clean.yaml", [str(tmp / "in" / "*.tar")], str(out)) == 0
    page = tmp / "report.html"
    return out, page, ""


def test_the_report_has_every_section_and_a_cell_per_text_image_pair(report, capsys):
    out, page, _ = report
    capsys.readouterr()
    assert main(["inspect", str(out), "--keep", "0.3", "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(f"→ {page}") and "thresholds on the alt-text score (itm)" in printed
    doc = page.read_text()
    for s in SECTIONS:
        assert f'<section id="{s}">' in doc
    assert "http://" not in doc and "https://" not in doc  # self-contained: nothing to fetch
    # the heatmap: one cell per (image, text) pair, each pair once
    cells = re.findall(r'<td class="cell" data-image="(\d+)" data-text="(\d+)">(-?[\d.]+)</td>', doc)
    n_img = len(set(i for i, _, _ in cells))
    n_txt = len(set(j for _, j, _ in cells))
    assert n_img >= 3 and n_txt == n_img and len(cells) == n_img * n_txt == len({(i, j) for i, j, _ in cells})
    # its diagonal is each image with its own alt-text: the run's own CLIP score of that row
    rows = {r["key"]: r for r in pq.read_table(out / "captions").to_pylist()}
    keys = re.findall(r'<tr data-key="([^"]+)">', doc)
    diagonal = {int(i): float(v) for i, j, v in cells if i == j}
    assert len(keys) == n_img
    for i, key in enumerate(keys):
        if rows[key]["text"]:  # CLIP's cosine of this image and its alt-text, as the run scored it
            assert abs(diagonal[i] - rows[key]["clip_text_score"]) < 1e-3, key
    # the gallery: thumbnails re-read from the input shards, the broken image as its error status
    assert doc.count('<div class="card') >= 8 and 'class="card decode_error' in doc
    assert re.search(r'<img alt="\d{9}" src="data:image/jpeg;base64,', doc)
    assert doc.count('alt="gradcam ') >= 1 and doc.count("scores\" src=\"data:image/png") == 3  # itm, itc, clip


def test_the_report_opens_in_a_real_browser(report, tmp_path):
    out, page, _ = report
    if not page.exists():
        assert main(["inspect", str(out), "--html", str(page)]) == 0
    exe = browser()
    if exe is None:
        pytest.skip("no chromium here (.ci/run installs Debian's `chromium`; `apt-get install -y chromium`)")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, "the page's load handler did not run"
    assert loaded.group(1) == loaded.group(2) and int(loaded.group(2)) == page.read_text().count("<img ")
    for s in SECTIONS:
        assert f'<section id="{s}">' in dom
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1200,3000", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 3000)
        assert len(set(im.convert("L").resize((60, 150)).getdata())) > 20  # drawn, not a blank page
    print(json.dumps({"screenshot": str(shot)}))
