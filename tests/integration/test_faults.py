"""Overnight safety: S3 throttling, killed actors, hostile inputs, credentials."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.fixtures.accounting import check_accounting
from tests.fixtures.memory import PeakRss
from tests.fixtures.paths import ROOT  # noqa: E402
from tests.fixtures.processes import cli, kill_leftovers, subprocess_env
from tests.fixtures.samples import tar_bytes, write_webdataset

TINY = str(ROOT / "configs" / "tiny.yaml")


def caption(inputs: list[str], output: str, *extra: str) -> int:
    return main(["caption", "--input", *inputs, "--output", output, "--config", TINY, "--set", "caption.max_new_tokens=5",
                 "--set", "caption.num_beams=2", "--set", "run.progress=log", *extra])


def test_s3_slowdown_every_third_request_gives_identical_output(ray_local, s3, s3_server, tmp_path):
    write_webdataset(tmp_path / "in", n_shards=3, per_shard=4, size=96)
    s3.mkdir("capfilt-flaky")
    for p in sorted((tmp_path / "in").glob("*.tar")):
        s3.put(str(p), f"capfilt-flaky/in/{p.name}")
    assert caption(["s3://capfilt-flaky/in/*.tar"], "s3://capfilt-flaky/clean") == 0
    s3_server.fail_every = 3
    failed_before = s3_server.failed
    assert caption(["s3://capfilt-flaky/in/*.tar"], "s3://capfilt-flaky/flaky") == 0
    s3_server.fail_every = 0
    assert s3_server.failed - failed_before >= 5, "the fault injection should have hit the run"
    clean = pq.read_table("capfilt-flaky/clean/captions", filesystem=s3).sort_by("key")
    flaky = pq.read_table("capfilt-flaky/flaky/captions", filesystem=s3).sort_by("key")
    assert clean.num_rows == 12
    assert clean.drop_columns(["run_id"]).equals(flaky.drop_columns(["run_id"]))  # run ids: one per run


def test_expired_credentials_mid_shard_commit_nothing_and_a_rerun_completes(ray_local, s3, s3_server, tmp_path, capsys):
    """403 ExpiredToken on every ranged GET past an object's first block: the run commits none of the
    affected shards and exits 4 naming each; once the credentials work again, a rerun completes with
    rows == input, 0 duplicates, 0 missing."""
    import json

    keys = write_webdataset(tmp_path / "in", n_shards=3, per_shard=4, size=96)
    s3.mkdir("capfilt-expired")
    for p in sorted((tmp_path / "in").glob("*.tar")):
        s3.put(str(p), f"capfilt-expired/in/{p.name}")
    args = (["s3://capfilt-expired/in/*.tar"], "s3://capfilt-expired/out", "--set", "storage={default_block_size: 4096}",
            "--set", "input.read_retries=2", "--set", "input.retry_backoff_s=0.1")
    s3_server.expired = True
    capsys.readouterr()
    try:
        code = caption(*args)
    finally:
        s3_server.expired = False
    err = capsys.readouterr().err
    assert code == 4, err[-2000:]
    assert "3 shard(s) failed, on infrastructure errors" in err and "Rerun the same command" in err
    assert all(f"s3://capfilt-expired/in/{i:05d}.tar: " in err for i in range(3))
    assert "ExpiredToken" in err or "expired" in err.lower() or "Forbidden" in err or "PermissionError" in err
    assert not s3.exists("capfilt-expired/out/_committed") or s3.ls("capfilt-expired/out/_committed") == []
    assert not s3.exists("capfilt-expired/out/captions") or s3.ls("capfilt-expired/out/captions") == []
    run = json.loads(s3.cat_file("capfilt-expired/out/run.json"))
    assert sorted(run["failed_shards"]) == [f"s3://capfilt-expired/in/{i:05d}.tar" for i in range(3)]
    assert caption(*args) == 0
    rows = pq.read_table("capfilt-expired/out/captions", filesystem=s3).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(keys)  # rows == input: 0 missing, 0 duplicates
    assert {r["status"] for r in rows} == {"ok"}
    check_accounting("capfilt-expired/out", s3, {f"s3://capfilt-expired/in/{i:05d}.tar": 4 for i in range(3)})


def _upload(s3, tmp_path, bucket: str, n_shards: int = 3) -> list[str]:
    keys = write_webdataset(tmp_path / "in", n_shards=n_shards, per_shard=4, size=96)
    s3.mkdir(bucket)
    for p in sorted((tmp_path / "in").glob("*.tar")):
        s3.put(str(p), f"{bucket}/in/{p.name}")
    return keys


@pytest.mark.slow  # waits out a 30 s outage
def test_a_30_second_s3_outage_is_ridden_out(ray_local, s3, s3_server, tmp_path):
    """Every request answers 503 for 30 s from the start of the run, then S3 is healthy: botocore's retries
    and the shard re-reads ride it out; rows == input, 0 duplicates, 0 missing."""
    import time

    keys = _upload(s3, tmp_path, "capfilt-outage")
    s3_server.outage_until = time.monotonic() + 30
    start = time.monotonic()
    code = caption(["s3://capfilt-outage/in/*.tar"], "s3://capfilt-outage/out", "--set", "input.retry_backoff_s=2")
    took = time.monotonic() - start
    print(f"30 s outage: exit {code} after {took:.0f}s, {s3_server.failed} requests answered 503")
    assert code == 0 and s3_server.failed >= 5 and took >= 30  # it did meet the outage, and waited it out
    rows = pq.read_table("capfilt-outage/out/captions", filesystem=s3).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(keys) and {r["status"] for r in rows} == {"ok"}
    check_accounting("capfilt-outage/out", s3, {f"s3://capfilt-outage/in/{i:05d}.tar": 4 for i in range(3)})


def test_read_timeouts_on_one_get_in_ten_lose_nothing(ray_local, s3, s3_server, tmp_path):
    keys = _upload(s3, tmp_path, "capfilt-slow")
    s3_server.slow_every, s3_server.slow_s = 10, 3.0
    storage = "storage={default_block_size: 4096, config_kwargs: {read_timeout: 1, connect_timeout: 1}}"
    code = caption(["s3://capfilt-slow/in/*.tar"], "s3://capfilt-slow/out", "--set", storage)
    s3_server.slow_every = 0
    assert code == 0 and s3_server.gets >= 10
    rows = pq.read_table("capfilt-slow/out/captions", filesystem=s3).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(keys) and {r["status"] for r in rows} == {"ok"}
    check_accounting("capfilt-slow/out", s3, {f"s3://capfilt-slow/in/{i:05d}.tar": 4 for i in range(3)})


MEMORY_BOUND = 6 * 2**30  # the bound the README states for this corpus on tiny models


def test_hostile_corpus_every_sample_gets_its_status(ray_local, tmp_path, photos, capsys):
    from tests.fixtures.hostile import POISON, corpus, truncated_parquet, write_tar
    from tests.fixtures.samples import jpeg

    members, expect = corpus(photos[0], POISON)
    shards = tmp_path / "in"
    shards.mkdir()
    write_tar(shards / "00000.tar", members, link_key="symlink", dup_key="good")
    expect["symlink"] = "read_error"
    expect["good#dup1"] = "duplicate_key"
    (shards / "00001.tar").write_bytes(tar_bytes({"x.jpg": jpeg(photos[1])})[:700])  # truncated tar
    (shards / "00002.tar").write_bytes(b"this object is not a tar at all" * 100)
    truncated_parquet(shards / "00003.parquet", jpeg(photos[2]))
    with PeakRss() as mem:
        assert caption([str(shards / "*")], str(tmp_path / "out")) == 0
    rows = pq.read_table(tmp_path / "out" / "captions").to_pylist()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        by_source.setdefault(Path(r["source"]).name, []).append(r)
    got = {r["key"]: r["status"] for r in by_source["00000.tar"]}
    assert got == expect
    tar_rows = {r["key"]: r for r in by_source["00000.tar"]}
    assert len(tar_rows["longtext"]["text"]) == 16384 and "caf" in tar_rows["latin1"]["text"]
    assert tar_rows["huge_legal"]["width"] == 6000 and tar_rows["rotated"]["width"] == 30
    assert all(tar_rows[k]["caption"] for k, s in expect.items() if s == "ok")
    assert [r["status"] for r in by_source["00001.tar"]] == ["read_error"]
    assert [r["status"] for r in by_source["00002.tar"]] == ["read_error"]
    assert [r["status"] for r in by_source["00003.parquet"]] == ["read_error"]
    print(f"hostile corpus: peak RSS of the run (driver + Ray) {mem.peak / 2**30:.2f} GiB")
    assert mem.peak < MEMORY_BOUND


def _actor_pids(stage: str) -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("ray::") and f"MapBatches({stage})" in cmd:
            pids.append(p.pid)
    return pids


@pytest.mark.slow
def test_killed_actor_is_restarted_and_nothing_is_lost_or_doubled(ray_local, tmp_path):
    import os
    import signal
    import threading
    import time

    keys = write_webdataset(tmp_path / "in", n_shards=8, per_shard=6, size=96)
    out = tmp_path / "out"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = list((out / "_committed").glob("*.json")) if (out / "_committed").exists() else []
            pids = _actor_pids("CaptionImages")
            if done and len(pids) >= 2:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
                return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    code = caption([str(tmp_path / "in" / "*.tar")], str(out), "--set", "caption.concurrency=2",
                   "--set", "caption.num_cpus=0.5", "--set", "caption.batch_size=4", "--set", "caption.max_new_tokens=30",
                   "--set", "caption.min_new_tokens=30", "--set", "caption.num_beams=4")
    t.join()
    assert killed, "an actor should have been killed mid-run"
    assert code == 0
    rows = pq.read_table(out / "captions").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(keys)  # rows out == rows in, 0 duplicates
    assert all(r["status"] == "ok" and r["caption"] for r in rows)


def _run_until_committed(tmp_path, ray_dir, shards_done: int, *extra: str):  # type: ignore[no-untyped-def]
    """A `capfilt caption` subprocess over 10 shards of 4, once `shards_done` of them are committed
    → (process, keys, output, command, env)."""
    import subprocess
    import time

    keys = write_webdataset(tmp_path / "in", n_shards=10, per_shard=4, size=96)
    out = tmp_path / "out"
    cmd = cli("caption", "--input", str(tmp_path / "in" / "*.tar"), "--output", str(out), "--config", TINY,
              "--set", "caption.max_new_tokens=20", "--set", "caption.min_new_tokens=20", "--set", "caption.batch_size=4",
              "--set", "input.rows_per_block=4", "--set", "run.progress=log", *extra)
    env = subprocess_env(ray_dir)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "_committed").exists() and len(list((out / "_committed").glob("*.json"))) >= shards_done:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped: " + proc.stderr.read()[-2000:]
    return proc, keys, out, cmd, env


@pytest.mark.slow
def test_sigkill_driver_half_way_then_rerun_finishes_exactly_once(tmp_path, ray_dir):
    import os
    import signal
    import subprocess

    proc, keys, out, cmd, env = _run_until_committed(tmp_path, ray_dir, 4)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kill_leftovers(str(ray_dir))
    done_before = len(list((out / "_committed").glob("*.json")))
    assert 4 <= done_before < 10
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    kill_leftovers(str(ray_dir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resume: {done_before} of 10 shards already committed" in rerun.stderr
    print(f"SIGKILL at {done_before}/10 shards; the rerun skipped them")
    rows = pq.read_table(out / "captions").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(keys)  # 0 missing, 0 duplicates
    assert not [p for p in (out / "captions").iterdir() if p.suffix != ".parquet" and not p.name.startswith(".")]
    assert f"{10 - done_before} shards ({done_before} already done)" in rerun.stdout


@pytest.mark.slow
def test_sigterm_commits_what_is_in_flight_exits_5_and_a_rerun_finishes_exactly_once(tmp_path, ray_dir):
    import os
    import signal
    import subprocess
    import time

    proc, keys, out, cmd, env = _run_until_committed(tmp_path, ray_dir, 2, "--set", "run.grace_s=60")
    os.kill(proc.pid, signal.SIGTERM)  # the driver only, as a spot preemption notice reaches it
    sent = time.monotonic()
    stdout, stderr = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    kill_leftovers(str(ray_dir))
    print(f"SIGTERM: exit {proc.returncode} {took:.1f}s later")
    assert proc.returncode == 5, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "Rerun the same command to resume" in stderr
    done = {p.stem for p in (out / "_committed").glob("*.json")}
    files = list((out / "captions").iterdir())
    assert {p.stem for p in files} == done and not [p for p in files if p.name.startswith(".")]  # nothing partial
    assert 2 <= len(done) < 10
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    kill_leftovers(str(ray_dir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = pq.read_table(out / "captions").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(keys)  # 0 missing, 0 duplicates
    check_accounting(str(out), rows_in={str(tmp_path / "in" / f"{i:05d}.tar"): 4 for i in range(10)})


@pytest.mark.slow
def test_two_drivers_started_together_on_one_output_commit_every_shard_once(tmp_path):
    """Two `capfilt` processes, each with its own local Ray, on the same inputs and output at the same time:
    every shard committed once, rows == input, 0 duplicates (a shard both finish is written by both to
    the same name with the same rows: output names come from the inputs, never from the driver)."""
    import shutil
    import subprocess
    import tempfile

    keys = write_webdataset(tmp_path / "in", n_shards=6, per_shard=4, size=96)
    out = tmp_path / "out"
    cmd = cli("caption", "--input", str(tmp_path / "in" / "*.tar"), "--output", str(out), "--config", TINY,
              "--set", "caption.max_new_tokens=8", "--set", "input.rows_per_block=4", "--set", "run.progress=log")
    dirs = [Path(tempfile.mkdtemp(prefix="cfray", dir="/tmp")) for _ in range(2)]
    try:
        procs = [subprocess.Popen(cmd, env=subprocess_env(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for d in dirs]
        results = [p.communicate(timeout=400) for p in procs]
    finally:
        for d in dirs:
            kill_leftovers(str(d))
            shutil.rmtree(d, ignore_errors=True)
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    markers = sorted(p.name for p in (out / "_committed").iterdir())
    assert markers == [f"{i:05d}.json" for i in range(6)]
    rows = pq.read_table(out / "captions").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(keys)  # 0 missing, 0 duplicates
    assert not [p for p in (out / "captions").iterdir() if p.name.startswith(".")]
    check_accounting(str(out), rows_in={str(tmp_path / "in" / f"{i:05d}.tar"): 4 for i in range(6)})


@pytest.mark.slow
def test_canary_credentials_never_leak(s3_server, tmp_path, ray_dir):
    import subprocess

    import s3fs

    key_id, secret = "AKIACANARY7Q3XLZ5W2M", "canary+Secret/9f8e7d6c5b4a3210CANARY"
    fs = s3fs.S3FileSystem(key=key_id, secret=secret, client_kwargs={"endpoint_url": s3_server.endpoint})
    write_webdataset(tmp_path / "in", n_shards=2, per_shard=3, size=64)
    fs.mkdir("capfilt-canary")
    for p in sorted((tmp_path / "in").glob("*.tar")):
        fs.put(str(p), f"capfilt-canary/in/{p.name}")
    env = subprocess_env(ray_dir, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret)
    cmd = cli("caption", "--input", "s3://capfilt-canary/in/*.tar", "--output", "s3://capfilt-canary/out",
               "--config", TINY, "--set", "caption.max_new_tokens=4", "--set", f"storage={{key: {key_id}, secret: '{secret}'}}",
               "--verbose")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    kill_leftovers(str(ray_dir))
    assert res.returncode == 0, res.stderr[-3000:]
    places = {"stdout": res.stdout, "stderr": res.stderr}
    for p in ray_dir.rglob("*"):
        if p.is_file() and p.stat().st_size < 50 * 2**20:
            places[str(p)] = p.read_bytes().decode("utf-8", errors="replace")
    for name in fs.find("capfilt-canary/out"):
        places[name] = fs.cat_file(name).decode("utf-8", errors="replace")
    assert any("run.json" in k for k in places) and any("_committed" in k for k in places)
    assert any("session" in k and k.endswith(".log") for k in places), "Ray's session logs should be searched"
    leaks = [k for k, text in places.items() if key_id in text or secret in text]
    assert leaks == []


@pytest.mark.slow
def test_losing_a_worker_node_completes_or_fails_fast(tmp_path, ray_dir):
    import json
    import subprocess
    import sys

    keys = write_webdataset(tmp_path / "in", n_shards=8, per_shard=4, size=96)
    out = tmp_path / "out"
    stall = 45
    env = subprocess_env(ray_dir)
    script = str(ROOT / "tests" / "fixtures" / "multinode.py")
    res = subprocess.run([sys.executable, script, str(tmp_path / "in" / "*.tar"), str(out), TINY, str(stall)], env=env,
                         capture_output=True, text=True, timeout=stall + 420)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["removed"], "the node should have been removed mid-run: " + report["stderr"]
    print(f"node removed; the job ended with {report['rc']} {report['seconds_after_removal']:.0f}s later")
    assert report["rc"] in (0, 3), report["stderr"]  # never a hang (None), never another failure
    assert report["seconds_after_removal"] <= stall + 120
    if report["rc"] == 0:
        rows = pq.read_table(out / "captions").to_pylist()
        assert sorted(r["key"] for r in rows) == sorted(keys)
    else:
        assert "no progress for" in report["stderr"] and "rerun the same command" in report["stderr"]
