"""Hangs end in bounded time. A decoder that hangs on one image makes a `decode_timeout` row and the job
completes (`decode.timeout_s`). Whatever else stalls (here: the same hang with no decode deadline) ends
with exit 3 and capfilt's message after `run.stall_timeout_s` — one stall guard, one exit code, whether
that is above or below Ray Data's own no-progress timeout (30 min by default;
RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S sets it, as here, so the test does not wait 30 min)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.fixtures.paths import TINY
from tests.fixtures.processes import cli, kill_leftovers, subprocess_env
from tests.fixtures.samples import jpeg, tar_bytes

HANG = b"CAPFILT-HANG"


@pytest.mark.slow  # a subprocess with its own local Ray, per case
@pytest.mark.parametrize("ours, rays", [(8, 3), (3, 1800)], ids=["above-rays", "below-rays"])
def test_a_hung_decoder_ends_the_run_with_exit_3(tmp_path, ray_dir, photos, ours, rays):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.tar").write_bytes(tar_bytes({"a.jpg": HANG + jpeg(photos[0]), "b.jpg": jpeg(photos[1])}))
    env = subprocess_env(ray_dir, CAPFILT_FAILPOINT_DECODE_HANG=HANG.decode(),
                         RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S=str(rays))
    cmd = cli("caption", "--input", str(tmp_path / "in" / "*.tar"), "--output", str(tmp_path / "out"), "--config", TINY,
              "--set", f"run.stall_timeout_s={ours}", "--set", "decode.timeout_s=0", "--set", "run.progress=log")
    start = time.monotonic()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    kill_leftovers(str(ray_dir))
    print(f"stall_timeout_s={ours}, Ray's {rays}: exit {res.returncode} after {time.monotonic() - start:.0f}s")
    assert res.returncode == 3, res.stderr[-3000:]
    assert "no progress for" in res.stderr and f"run.stall_timeout_s={ours}" in res.stderr
    assert "ExecutionTimeoutError" not in res.stderr
    assert not (tmp_path / "out" / "_committed").exists() or not list((tmp_path / "out" / "_committed").iterdir())


@pytest.mark.slow  # a subprocess with its own local Ray
def test_a_decoder_that_hangs_on_one_image_makes_a_row_and_the_job_completes(tmp_path, ray_dir, photos):
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.tar").write_bytes(tar_bytes({"a.jpg": jpeg(photos[0]), "b.jpg": HANG + jpeg(photos[1]),
                                                           "c.jpg": jpeg(photos[2])}))
    env = subprocess_env(ray_dir, CAPFILT_FAILPOINT_DECODE_HANG=HANG.decode())
    cmd = cli("caption", "--input", str(tmp_path / "in" / "*.tar"), "--output", str(tmp_path / "out"), "--config", TINY,
              "--set", "decode.timeout_s=3", "--set", "run.stall_timeout_s=120", "--set", "run.progress=log")
    start = time.monotonic()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    kill_leftovers(str(ray_dir))
    print(f"decode.timeout_s=3: exit {res.returncode} after {time.monotonic() - start:.0f}s")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "captions").to_pylist()}
    assert {k: r["status"] for k, r in rows.items()} == {"a": "ok", "b": "decode_timeout", "c": "ok"}
    assert rows["b"]["caption"] is None and rows["a"]["caption"]
