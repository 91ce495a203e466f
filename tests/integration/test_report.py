"""`capfilt inspect OUT --html`: the report of a tiny clean run, checked as a file and in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.fixtures.commands import run
from tests.integration.test_jobs import write_shards

SECTIONS = ("summary", "histograms", "gallery", "heatmap", "gradcam", "curation", "dedup")


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


@pytest.fixture(scope="module")
def curated(ray_local, tmp_path_factory) -> tuple[Path, dict]:
    """An `embed` run with the curation heads over a corpus of planted duplicates, then `capfilt dedup`."""
    from tests.integration.test_dedup import planted_corpus

    tmp = tmp_path_factory.mktemp("curated")
    truth = planted_corpus(tmp / "in", n_shards=2)
    out = tmp / "out"
    assert run("embed", "tiny-curate.yaml", [str(tmp / "in" / "*.tar")], str(out), "--set", "embed.dtype=float32",
               "--set", "curate.aesthetic_min=0.0") == 0
    assert main(["dedup", str(out), "--set", "dedup.semantic=false"]) == 0
    return out, truth


def test_inspect_reports_the_heads_thresholds_and_the_dedup_kept_count_and_groups(curated, capsys):
    out, truth = curated
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    t = pq.read_table(out / "embeddings")
    for column, rule, configured in (("aesthetic_score", ">=", 0.0), ("nsfw_score", "<", 0.5)):
        x = t[column].to_numpy()
        h = d["curation"][column]
        assert h["n"] == len(x) == len(truth) and h["rule"] == rule and h["error_rows"] == 0  # small shards: exact
        assert h["quantiles"]["p50"] == pytest.approx(float(np.quantile(x, 0.5, method="inverted_cdf")), abs=1e-6)
        kept = (x >= configured) if rule == ">=" else (x < configured)
        assert h["configured"] == {"threshold": configured, "kept": float(kept.sum()), "of": len(x)}
        for row in h["thresholds"]:  # each keeps what it says on the stored float32 scores: at least its share,
            k = round(row["keep_fraction"] * len(x))  # and any stricter threshold fewer (ties: the random NSFW
            at = np.float32(row["threshold"])  # head's sigmoid saturates at 0 and 1)
            if rule == ">=":
                assert (x >= at).sum() == row["kept"] >= k > (x > at).sum()
            else:
                assert (x < at).sum() == row["kept"] >= k > (x < np.nextafter(at, np.float32(-np.inf))).sum()
    dd = d["dedup"]
    rows = {r["key"]: r for r in pq.read_table(out / "dedup").to_pylist()}
    assert dd["kept"] == sum(r["keep"] for r in rows.values()) and dd["rows"] == len(truth)
    assert dd["run_kept"] == sum(t["keep"].to_pylist())  # the run's keep (NSFW < 0.5) beside the final one
    assert dd["duplicates"]["exact"] == 6 and "semantic" not in dd["duplicates"] and dd["groups"]  # semantic: off
    assert {"exact", "perceptual"} <= {x["method"] for g in dd["groups"] for x in g["duplicates"]}
    for g in dd["groups"]:
        assert rows[g["kept"]["key"]]["method"] is None
        assert all(rows[x["key"]]["duplicate_of"] == g["kept"]["key"] for x in g["duplicates"])
        assert g["size"] == 1 + sum(r["duplicate_of"] == g["kept"]["key"] for r in rows.values())
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"dedup: {dd['kept']} of {len(truth)} rows kept" in printed and "curate.nsfw_max 0.5" in printed


def test_the_report_shows_the_heads_extremes_and_duplicate_groups_in_a_real_browser(curated, tmp_path, capsys):
    out, truth = curated
    page = tmp_path / "curated.html"
    assert main(["inspect", str(out), "--html", str(page)]) == 0
    doc = page.read_text()
    t = pq.read_table(out / "embeddings").sort_by("key")
    for column in ("aesthetic_score", "nsfw_score"):
        assert f'alt="{column} scores" src="data:image/png' in doc  # its histogram
        order = sorted(zip(t[column].to_pylist(), t["key"].to_pylist(), strict=True), key=lambda p: (-p[0], p[1]))
        for which, want in (("highest", [k for _, k in order[:4]]), ("lowest", [k for _, k in order[::-1][:4]])):
            block = re.search(rf'<div class="extremes" data-column="{column}" data-which="{which}">(.*?)</div>', doc)
            assert block and re.findall(r'<figure class="thumb" data-key="([^"]+)">', block.group(1)) == want
    dedup = re.search(r'<section id="dedup">(.*?)</section>', doc, re.S).group(1)
    kept = sum(pq.read_table(out / "dedup")["keep"].to_pylist())
    assert f'data-final-kept="{kept}"' in dedup
    groups = re.findall(r'<div class="group" data-size="(\d+)">(.*?)</div>', dedup)
    assert groups and all(len(re.findall(r'<img alt="[^"]+" src="data:image/jpeg', g)) == int(n) for n, g in groups
                          if int(n) <= 7)
    exe = browser()
    if exe is None:
        pytest.skip("no chromium here (.ci/run installs Debian's `chromium`; `apt-get install -y chromium`)")
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) and int(loaded.group(2)) == doc.count("<img ")
    assert '<section id="curation">' in dom and '<section id="dedup">' in dom
