"""What every run prints is true and quiet: the end line's seconds are the command's, a short run claims no
steady rate or ETA, stderr holds capfilt's own lines unless --verbose, and the local Ray capfilt starts
reports no usage statistics unless the user says so. Each in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from pipeline import quiet
from tests.fixtures.paths import ROOT, TINY
from tests.fixtures.processes import cli, subprocess_env
from tests.fixtures.samples import write_webdataset

# capfilt's own stderr: its log lines (logging's default format as the CLI sets it) and its one-line errors
CAPFILT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) capfilt[.:\w]*|capfilt: )")


@pytest.fixture()
def shards(tmp_path):
    write_webdataset(tmp_path / "in", n_shards=2, per_shard=4, size=64)
    return str(tmp_path / "in" / "*.tar")


def run(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(cli(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return done, time.perf_counter() - start


@pytest.mark.slow  # two jobs, each on its own local Ray
def test_the_end_line_is_the_commands_time_and_stderr_is_capfilts_own(tmp_path, ray_dir, shards):
    # a user's environment: without the switches an earlier in-process run of this session set (quiet.ENV)
    env = {k: v for k, v in subprocess_env(ray_dir).items() if k not in quiet.ENV}
    args = ["caption", "--input", shards, "--config", TINY, "--set", "run.progress=log", "--set", "run.log_every_s=0"]
    done, wall = run([*args, "--output", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    end = next(x for x in done.stdout.splitlines() if " rows (" in x)
    seconds = float(re.search(r" in ([\d.]+)s \(start-up ([\d.]+)s, work ([\d.]+)s, shutdown ([\d.]+)s\)", end).group(1))
    assert abs(seconds - wall) <= 1.0, (seconds, wall)  # the stopwatch's figure, not the loop's
    assert "steady n/a" in end  # 8 images: far shorter than the 10 s steady window
    progress = [x for x in done.stderr.splitlines() if "progress:" in x]
    assert progress and all("steady rate n/a yet | ETA n/a" in x or x.split("progress: ")[1].startswith("starting")
                            for x in progress)
    others = [x for x in done.stderr.splitlines() if x.strip() and not CAPFILT_LINE.match(x)]
    assert others == [], others

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

    loud, _ = run([*args, "--output", str(tmp_path / "out-verbose"), "--verbose"], env)
    assert loud.returncode == 0, loud.stderr
    libraries = [x for x in loud.stderr.splitlines() if x.strip() and not CAPFILT_LINE.match(x)]
    assert any("Loading weights" in x for x in libraries)  # transformers' bar, from the model actor
    assert any("core_worker.cc" in x for x in libraries)  # Ray's C++ line, written straight to fd 2


USAGE = """
import os, sys
from pipeline.config import load_config
from pipeline.ray_start import init_ray, shutdown
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
