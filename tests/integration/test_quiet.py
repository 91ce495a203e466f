"""What every run prints is true and quiet: the end line's seconds are the command's, a short run claims no
steady rate or ETA, stderr holds capfilt's own lines unless --verbose (a first run that builds its tiny
models, `inspect --html` that loads the run's scorers and draws), nothing reads "None", `--help` names
every captioner family, and the local Ray capfilt starts reports no usage statistics unless the user says
so. Each in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from pipeline.models.captioner import FAMILIES
from pipeline.runner import quiet
from tests.fixtures.paths import CONFIGS, ROOT, TINY
from tests.fixtures.processes import cli, subprocess_env
from tests.fixtures.samples import write_webdataset

# capfilt's own stderr: its log lines (logging's default format as the CLI sets it; its modules log as
# `pipeline.*`) and its one-line errors
CAPFILT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) (capfilt|pipeline)[.:\w]*|capfilt: )")
# How `capfilt --help` names each captioner family (pipeline/models/captioner.py: FAMILIES)
FAMILY_NAMES = {"blip": "BLIP", "blip-2": "BLIP-2", "vision-encoder-decoder": "ViT-GPT2", "llava": "LLaVA",
                "florence2": "Florence-2", "qwen2_vl": "Qwen2-VL", "smolvlm": "SmolVLM"}


@pytest.fixture()
def shards(tmp_path):
    write_webdataset(tmp_path / "in", n_shards=2, per_shard=4, size=64)
    return str(tmp_path / "in" / "*.tar")


def run(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(cli(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done, time.perf_counter() - start


def not_capfilts(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.strip() and not CAPFILT_LINE.match(x)]


def test_help_names_every_captioner_family():
    assert set(FAMILY_NAMES) == set(FAMILIES)  # a new family: name it in jobs/caption.py's help and here
    done = subprocess.run(cli("--help"), cwd=ROOT, env={**os.environ, "COLUMNS": "200"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    caption = next(x for x in done.stdout.splitlines() if x.strip().startswith("caption "))
    assert [n for n in FAMILY_NAMES.values() if not re.search(rf"[( ]{re.escape(n)}[,)]", caption)] == [], caption


@pytest.mark.slow  # three jobs, each on its own local Ray, and an inspect
def test_the_end_line_is_the_commands_time_and_stderr_is_capfilts_own(tmp_path, ray_dir, shards):
    # a user's environment: without the switches an earlier in-process run of this session set (quiet.ENV),
    # and a first run: an empty model cache (the tiny models are built, by transformers' save_pretrained)
    env = {k: v for k, v in subprocess_env(ray_dir).items() if k not in quiet.ENV}
    env["CAPFILT_CACHE"] = str(tmp_path / "cache")
    # clean: three models to build, and two scorers for `inspect --html` to load
    args = ["clean", "--input", shards, "--config", str(CONFIGS / "tiny-clean.yaml"), "--set", "run.progress=log",
            "--set", "run.log_every_s=0"]
    done, wall = run([*args, "--output", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    assert "building tiny model" in done.stderr and "None" not in done.stdout
    end = next(x for x in done.stdout.splitlines() if " rows (" in x)
    seconds = float(re.search(r" in ([\d.]+)s \(start-up ([\d.]+)s, work ([\d.]+)s, shutdown ([\d.]+)s\)", end).group(1))
    assert abs(seconds - wall) <= 1.0, (seconds, wall)  # the stopwatch's figure, not the loop's
    assert "steady n/a" in end  # 8 images: far shorter than the 10 s steady window
    progress = [x for x in done.stderr.splitlines() if "progress:" in x]
    assert progress and all("steady rate n/a yet | ETA n/a" in x or x.split("progress: ")[1].startswith("starting")
                            for x in progress)
    assert not_capfilts(done.stderr) == []  # no "Writing model shards" bar, no "Loading weights"

    # The report of that run, by a matplotlib that has no font cache yet (its first use on a machine).
    page = tmp_path / "report.html"
    shown, _ = run(["inspect", str(tmp_path / "out"), "--html", str(page)], {**env, "MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert shown.returncode == 0, shown.stderr
    assert page.exists() and "(steady n/a)" in shown.stdout and "None" not in shown.stdout  # the page's summary too
    assert not_capfilts(shown.stderr) == []  # no "Loading weights" bar, no matplotlib INFO line

    # Long enough for a steady window of 0.3 s: 16 shards, whose captions reach the driver a shard at a time
    # (beam 4, 24 tokens). The steady rate is the rows after the first block over the time since.
    write_webdataset(tmp_path / "many", n_shards=16, per_shard=4, size=64)
    steady, _ = run(["caption", "--input", str(tmp_path / "many" / "*.tar"), "--config", TINY, "--output",
                     str(tmp_path / "out-steady"), "--set", "run.steady_window_s=0.3", "--set", "caption.strategy=beam",
                     "--set", "caption.num_beams=4", "--set", "caption.max_new_tokens=24",
                     "--set", "caption.min_new_tokens=24"], env)
    assert steady.returncode == 0, steady.stderr
    report = json.loads((tmp_path / "out-steady" / "run.json").read_text())
    rate, t = report["steady_images_per_s"], report["timing"]
    assert rate is not None and t["work_s"] >= 0.3, t
    assert 0 < t["first_block_rows"] < report["rows"]
    assert abs(rate / ((report["rows"] - t["first_block_rows"]) / t["work_s"]) - 1) <= 0.2
    assert rate < report["rows"] / t["work_s"] * 1.01 and report["images_per_s"] < rate  # start-up not in it
    assert f"steady {rate:.1f} img/s" in next(x for x in steady.stdout.splitlines() if " rows (" in x)

    loud, _ = run([*args, "--output", str(tmp_path / "out-verbose"), "--verbose"], {**env, "CAPFILT_CACHE": str(tmp_path / "c2")})
    assert loud.returncode == 0, loud.stderr
    libraries = not_capfilts(loud.stderr)
    assert any("Writing model shards" in x for x in libraries)  # transformers' bar, building the tiny models
    assert any("Loading weights" in x for x in libraries)  # transformers' bar, from the model actor
    assert any("core_worker.cc" in x for x in libraries)  # Ray's C++ line, written straight to fd 2


USAGE = """
import os, sys
from pipeline.config import load_config
from pipeline.runner.ray_start import init_ray, shutdown
from ray._common.usage import usage_lib
cfg = load_config(None, ["run.num_cpus=1"])
init_ray(cfg)
import psutil
env = [p.environ().get("RAY_USAGE_STATS_ENABLED") for p in psutil.Process().children(recursive=True)
       if "gcs_server" in " ".join(p.cmdline())]
print("USAGE", usage_lib.usage_stats_enabled(), env)
shutdown(cfg)
"""


@pytest.mark.slow  # a local Ray
def test_the_local_ray_capfilt_starts_reports_no_usage_statistics(ray_dir):
    """Checked in the GCS process's own environment (the process that would report). A user who wants to
    report runs `ray start` (which follows `ray enable-usage-stats`) and attaches: Ray 2.60's ray.init
    turns them off for a local cluster it starts whatever the environment says (capfilt's default holds
    where a Ray version would not)."""
    done = subprocess.run([sys.executable, "-c", USAGE], cwd=ROOT, env=subprocess_env(ray_dir), capture_output=True,
                          text=True, timeout=120)
    line = next((x for x in done.stdout.splitlines() if x.startswith("USAGE ")), None)
    assert line, done.stdout + done.stderr
    assert line == "USAGE False ['0']"  # the driver's view and the GCS process's environment
