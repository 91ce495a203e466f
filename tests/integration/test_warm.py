"""Warm model actors (run.keep_warm_s): attached to a running one-node Ray, a run's model actors stay loaded
for the next run with the same models, which writes the same rows; other models' idle actors make room;
idle ones leave; a crashed or vanished one is started again and its block retried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fixtures.paths import CONFIGS, ROOT, TINY
from tests.fixtures.processes import RunningRay, cli
from tests.fixtures.samples import write_webdataset

pytestmark = pytest.mark.slow  # a running Ray (`ray start --head`) and jobs attached to it

LIST_WARM = """
import json, ray
ray.init(address={address!r}, logging_level="ERROR")
print("WARM " + json.dumps(sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                                  if a["namespace"] == "capfilt")))
"""


# The jobs a Ray has had, but the asking one: (id, ended). (Ray's public job listing needs its dashboard.)
JOBS = """
import json, ray
ray.init(address={address!r}, logging_level="ERROR")
me = ray.get_runtime_context().get_job_id()
print("JOBS " + json.dumps([(j["JobID"], j["IsDead"]) for j in ray._private.state.jobs() if j["JobID"] != me]))
"""


@pytest.fixture()
def running_ray(model_cache):
    with RunningRay(cpus=2) as r:
        yield r


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("warm-in")
    write_webdataset(d, n_shards=2, per_shard=6, size=96)
    return str(d / "*.tar")


def attached(ray: RunningRay, job: str, shards: str, out: Path, config: str = TINY, *sets: str) -> dict:
    """`capfilt <job>` attached to `ray`: its run.json."""
    sets_args = [x for s in ("run.progress=none", *sets) for x in ("--set", s)]
    done = subprocess.run(cli(job, "--input", shards, "--output", str(out), "--config", config, "--address", ray.address,
                              *sets_args), cwd=ROOT, env=ray.client_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Loading weights" not in done.stderr  # quiet's switches reached the actors on the running Ray
    return json.loads((out / "run.json").read_text())


def warm_actors(ray: RunningRay) -> list[str]:
    done = subprocess.run([sys.executable, "-c", LIST_WARM.format(address=ray.address)], cwd=ROOT, env=ray.client_env(),
                          capture_output=True, text=True, timeout=120)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WARM ")), None)
    assert line, done.stderr[-2000:]
    return json.loads(line.removeprefix("WARM "))


def captions(out: Path) -> dict[str, list[str]]:
    t = pq.read_table(out / "captions", columns=["key", "captions"])
    return dict(zip(t["key"].to_pylist(), t["captions"].to_pylist(), strict=True))


def test_a_second_run_reuses_the_warm_model_and_writes_what_the_actor_pool_writes(running_ray, shards, tmp_path):
    first = attached(running_ray, "caption", shards, tmp_path / "a")
    second = attached(running_ray, "caption", shards, tmp_path / "b")
    assert len(warm_actors(running_ray)) == 1  # one stage, one actor (caption.concurrency: 1)
    # Ray Data's actor pool needs the CPU the idle warm actor holds (2 CPUs: 1 + 1 + decode): it retires it
    pool = attached(running_ray, "caption", shards, tmp_path / "c", TINY, "run.keep_warm_s=0")
    assert warm_actors(running_ray) == []
    assert first["warm_actors"] == {"CaptionImages": "started"}
    assert set(first["actor_start"]) == {"CaptionImages.worker_s", "CaptionImages.load_s"}  # it loaded the model
    assert second["warm_actors"] == {"CaptionImages": "reused"} and "actor_start" not in second  # no load at all
    assert "warm_actors" not in pool and "CaptionImages.load_s" in pool["actor_start"]  # Ray Data's actor pool
    assert first["counts"] == second["counts"] == pool["counts"] == {"ok": 12}
    assert captions(tmp_path / "a") == captions(tmp_path / "b") == captions(tmp_path / "c")


def test_another_models_run_retires_idle_warm_actors_for_their_cpus(running_ray, shards, tmp_path):
    """On 2 CPUs an idle caption actor (1 CPU) and an embed actor (1 CPU) would leave the decode tasks
    none: the embed run asks the idle one to leave, and a later caption run starts its own again."""
    attached(running_ray, "caption", shards, tmp_path / "cap")
    [caption_actor] = warm_actors(running_ray)
    embed = attached(running_ray, "embed", shards, tmp_path / "emb", str(CONFIGS / "tiny-embed.yaml"))
    assert embed["warm_actors"] == {"EmbedImages": "started"} and embed["counts"] == {"ok": 12}
    left = warm_actors(running_ray)
    assert caption_actor not in left and len(left) == 1
    again = attached(running_ray, "caption", shards, tmp_path / "cap2")
    assert again["warm_actors"] == {"CaptionImages": "started"}
    assert captions(tmp_path / "cap2") == captions(tmp_path / "cap")


def test_an_idle_warm_actor_leaves_after_keep_warm_s(running_ray, shards, tmp_path):
    import time

    attached(running_ray, "caption", shards, tmp_path / "a", TINY, "run.keep_warm_s=2")
    deadline = time.monotonic() + 60
    while warm_actors(running_ray) and time.monotonic() < deadline:
        time.sleep(1)
    assert warm_actors(running_ray) == []


class CrashOnce:
    """A model stage whose process dies (as on a hardware fault) on its first block, marked by a file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text("crashed")
            os._exit(1)
        batch["doubled"] = batch["x"] * 2
        return batch


def test_a_warm_actor_that_crashes_or_vanishes_gets_the_block_again(ray_local, tmp_path):
    import ray

    from pipeline.job import StageSpec
    from pipeline.runner.ray_adapter import WARM_NAMESPACE, start_warm

    spec = StageSpec(CrashOnce, (str(tmp_path / "crashed"),), actor=True, batch_size=4, num_cpus=0.25)
    call, reused = start_warm(spec, None, 60.0, None)
    assert not reused
    table = pa.table({"x": list(range(10))})
    try:
        out = pa.concat_tables(call(table))  # in batches of 4; the first killed the actor: Ray restarted it
        assert out["doubled"].to_pylist() == [2 * x for x in range(10)]
        assert (tmp_path / "crashed").read_text() == "crashed"
        [name] = call.names
        ray.kill(ray.get_actor(name, namespace=WARM_NAMESPACE), no_restart=True)  # gone for good (retired, expired)
        out = pa.concat_tables(call(table.slice(0, 3)))
        assert out["doubled"].to_pylist() == [0, 2, 4]
    finally:
        for name in call.names:
            try:
                ray.kill(ray.get_actor(name, namespace=WARM_NAMESPACE), no_restart=True)
            except ValueError:
                pass


def test_beside_warm_actors_ray_data_runs_only_the_decode_tasks_their_cpus_leave_room_for(ray_local):
    """A decode task waiting on a warm actor gives its CPU back to Ray; Ray Data, counting the warm actors'
    CPUs as free, ran more such tasks at once (each a worker process to start on few cores). With the
    limits a run sets (ray_adapter.configure, from ray_start.spare): no more than fit beside the actors."""
    import time

    import ray

    from pipeline.config import load_config
    from pipeline.runner.ray_adapter import configure, stream

    @ray.remote(num_cpus=0)
    class Model:  # a warm actor's stand-in: its CPU is not Ray Data's to count
        def run(self, x: int) -> int:
            time.sleep(1.5)  # long enough for Ray to start a worker process for another task meanwhile
            return x

    model = Model.remote()

    def call(batch: dict) -> dict:  # as a warm stage's task (_WarmCall): the block to the actor, waiting
        start = time.time()
        ray.get(model.run.remote(0))
        return {"start": [start], "end": [time.time()]}

    def most_at_once(limits: tuple[float, float] | None) -> int:
        configure(cfg, limits)
        ds = ray.data.from_items([{"i": i} for i in range(6)], override_num_blocks=6)
        spans = [(b["start"][0].as_py(), b["end"][0].as_py())
                 for b in stream(ds.map_batches(call, batch_size=None, num_cpus=cfg.decode.num_cpus))]
        return max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)

    cfg = load_config(TINY)  # decode tasks of 0.5 CPU; the session's Ray has 2 CPUs
    try:
        assert most_at_once((1.0, 0.0)) == 2  # 2 CPUs, 1 of them the actor's
        assert most_at_once(None) > 2  # the check sees more where Ray Data counts every CPU
    finally:
        configure(cfg)
        ray.kill(model)


def test_estimate_on_a_running_ray_measures_the_stages_apart(running_ray, shards):
    """Its sample runs in Ray Data's actor pools, as a run on a cluster: the model stage's seconds are its
    own, not fused into the decode tasks' (and it leaves no warm actor behind)."""
    done = subprocess.run(cli("estimate", "caption", "--input", shards, "--config", TINY, "--sample", "8", "--json",
                              "--address", running_ray.address), cwd=ROOT, env=running_ray.client_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads(done.stdout)["stages"]
    model = [op for op, st in stages.items() if st["model"]]
    assert len(model) == 1 and model[0].endswith("(CaptionImages)") and "DecodeImages" not in model[0]
    assert warm_actors(running_ray) == []


def test_a_command_leaves_a_running_ray_by_its_exit_its_job_ended_and_its_workers_gone(running_ray, shards, tmp_path):
    """`capfilt` on a running Ray does not disconnect before it exits (ray_start.shutdown: the exit does,
    ~0.3 s sooner): Ray ends the job and stops its task workers all the same; the warm model stays."""
    import time

    import psutil

    from tests.fixtures.processes import leftovers

    def jobs() -> list[list]:
        done = subprocess.run([sys.executable, "-c", JOBS.format(address=running_ray.address)], cwd=ROOT,
                              env=running_ray.client_env(), capture_output=True, text=True, timeout=120)
        line = next((x for x in done.stdout.splitlines() if x.startswith("JOBS ")), None)
        assert line, done.stderr[-2000:]
        return [j for j in json.loads(line.removeprefix("JOBS ")) if j[0] not in checkers]

    def task_workers() -> list[str]:
        names = []
        for p in leftovers(str(running_ray.tmp)):
            try:
                names += [n for n in [" ".join(p.cmdline())] if n.startswith("ray::IDLE")]
            except psutil.Error:
                pass
        return names

    checkers: set[str] = set()
    checkers |= {j[0] for j in jobs()}  # before the command: none but an earlier checker's
    attached(running_ray, "caption", shards, tmp_path / "out")
    deadline = time.monotonic() + 20
    while (task_workers() or not all(ended for _, ended in jobs())) and time.monotonic() < deadline:
        time.sleep(0.5)
    ran = jobs()
    assert len(ran) >= 1 and all(ended for _, ended in ran), ran  # the command's (and checkers' since: ended)
    assert task_workers() == []
    assert warm_actors(running_ray)
