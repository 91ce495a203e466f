"""`capfilt retry OUT`: the rows of an earlier run whose status is retryable run again, with that run's
job, inputs and config, and go back into their shards: every key still appears exactly once."""

from __future__ import annotations

import json
import subprocess

import pyarrow.parquet as pq
import pytest

from tests.fixtures.accounting import check_accounting
from tests.fixtures.paths import TINY
from tests.fixtures.processes import cli, kill_leftovers, subprocess_env
from tests.fixtures.samples import jpeg, tar_bytes

MARKER = "CAPFILT-MODEL-ERROR"


@pytest.mark.slow  # two subprocesses with their own local Ray
def test_retry_after_injected_model_errors(tmp_path, ray_dir, photos):
    (tmp_path / "in").mkdir()
    failing = {"00000001", "00010002"}
    for s in range(2):
        members = {}
        for i in range(4):
            key = f"{s:04d}{i:04d}"
            members[f"{key}.jpg"] = jpeg(photos[(s * 4 + i) % len(photos)])
            members[f"{key}.txt"] = (f"{MARKER} alt {key}" if key in failing else f"alt {key}").encode()
        (tmp_path / "in" / f"{s:05d}.tar").write_bytes(tar_bytes(members))
    out = tmp_path / "out"
    cmd = cli("caption", "--input", str(tmp_path / "in" / "*.tar"), "--output", str(out), "--config", TINY,
              "--set", "caption.max_new_tokens=6", "--set", "run.progress=log")
    first = subprocess.run(cmd, env=subprocess_env(ray_dir, CAPFILT_FAILPOINT_MODEL_ERROR=MARKER), capture_output=True,
                           text=True, timeout=300)
    kill_leftovers(str(ray_dir))
    assert first.returncode == 0, first.stderr[-3000:]
    rows = {r["key"]: r for r in pq.read_table(out / "captions").to_pylist()}
    assert {k for k, r in rows.items() if r["status"] == "model_error"} == failing
    assert all(rows[k]["error"].startswith("RuntimeError: failpoint") and rows[k]["caption"] is None for k in failing)
    before = {k: r["caption"] for k, r in rows.items() if k not in failing}

    retry = subprocess.run(cli("retry", str(out)), env=subprocess_env(ray_dir), capture_output=True, text=True, timeout=300)
    kill_leftovers(str(ray_dir))
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "retry: 2 rows (decode_timeout, model_error, model_oom) in 2 shards" in retry.stderr
    assert "capfilt caption retry: 2 rows (ok=2) from 2 shards" in retry.stdout
    table = pq.read_table(out / "captions")
    rows = {r["key"]: r for r in table.to_pylist()}
    assert table.num_rows == 8 and len(rows) == 8  # every key exactly once
    assert {r["status"] for r in rows.values()} == {"ok"} and all(rows[k]["caption"] for k in failing)
    assert {k: rows[k]["caption"] for k in before} == before  # the other rows are as they were
    markers = [json.loads(p.read_text()) for p in sorted((out / "_committed").iterdir())]
    assert [m["counts"] for m in markers] == [{"ok": 4}, {"ok": 4}] and [m["retried_rows"] for m in markers] == [1, 1]
    check_accounting(str(out), rows_in={str(tmp_path / "in" / f"{i:05d}.tar"): 4 for i in range(2)})
    report = json.loads((out / "run.json").read_text())
    assert report["totals"]["counts"] == {"ok": 8} and report["retry"] == {"rows": 2, "shards": 2}
    again = subprocess.run(cli("retry", str(out)), env=subprocess_env(ray_dir), capture_output=True, text=True, timeout=300)
    kill_leftovers(str(ray_dir))
    assert again.returncode == 0 and "retry: 0 rows" in again.stderr  # nothing left to retry
