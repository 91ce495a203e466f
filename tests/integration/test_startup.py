"""What the driver does not do: import torch or transformers for a job whose models are local directories
or tiny presets (the models' actors import them; the driver reads JSON), start Ray for `--help`, a config
error or `inspect`. Checked in a subprocess by the modules it imported; and run.json's phases."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures.paths import CONFIGS, ROOT, TINY
from tests.fixtures.processes import leftovers, subprocess_env
from tests.fixtures.samples import write_webdataset

HEAVY = ("torch", "transformers", "ray")

# Runs capfilt's main() with argv, then prints which of HEAVY the process imported, and main's exit code.
PROBE = """
import json, sys
from pipeline.cli import main
try:
    code = main()  # the arguments from the command line, as `capfilt` runs it
except SystemExit as e:
    code = e.code
print("PROBE " + json.dumps({"code": code, "imported": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def probe(args: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
    assert line, done.stdout + done.stderr
    return json.loads(line.removeprefix("PROBE "))


@pytest.fixture()
def shards(tmp_path):
    write_webdataset(tmp_path / "in", n_shards=2, per_shard=4, size=64)
    return str(tmp_path / "in" / "*.tar")


def test_help_and_a_config_error_import_neither_torch_nor_ray(tmp_path, ray_dir, shards):
    env = subprocess_env(ray_dir)
    assert probe(["--help"], env) == {"code": 0, "imported": []}
    assert probe(["caption", "--help"], env) == {"code": 0, "imported": []}
    bad = probe(["caption", "--input", shards, "--output", str(tmp_path / "out"), "--config", TINY,
                 "--set", "caption.batch_size=0"], env)
    assert bad == {"code": 2, "imported": []}
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # a job on its own local Ray in a subprocess
@pytest.mark.parametrize(("job", "config"), [("caption", TINY), ("embed", str(CONFIGS / "tiny-embed.yaml")),
                                             ("caption", str(CONFIGS / "tiny-qwen2-vl.yaml"))],
                         ids=["caption", "embed", "caption-qwen2-vl"])
def test_a_job_with_local_models_imports_neither_torch_nor_transformers_on_the_driver(tmp_path, ray_dir, shards,
                                                                                      job, config):
    out = tmp_path / "out"
    env = subprocess_env(ray_dir)
    got = probe([job, "--input", shards, "--output", str(out), "--config", config, "--set", "run.progress=none"], env)
    assert got == {"code": 0, "imported": ["ray"]}  # the models ran in the actors: torch is theirs
    # the Ray it started is gone with it (its autoscaler's monitor, which shutdown kills first, included)
    assert [" ".join(p.cmdline()) for p in leftovers(str(ray_dir))] == []
    run = json.loads((out / "run.json").read_text())
    assert run["rows"] == 8 and run["counts"] == {"ok": 8}
    phases = run["phases"]
    # the command's phases, in the order they ran, within the whole command's time
    assert list(phases)[:4] == ["interpreter_imports", "config_models", "plan", "ray_start"]
    assert {"first_block", "commit", "shutdown", "total"} <= set(phases)
    assert all(v >= 0 for v in phases.values())
    assert sum(v for k, v in phases.items() if k not in ("total", "commit")) <= phases["total"] + 0.01
    stage = {"caption": "CaptionImages", "embed": "EmbedImages"}[job]
    assert set(run["actor_start"]) == {f"{stage}.worker_s", f"{stage}.load_s"}
    assert 0 < run["actor_start"][f"{stage}.load_s"] < phases["first_block"]

    # inspect reads the output: no Ray, no torch
    assert probe(["inspect", str(out)], env) == {"code": 0, "imported": []}


class _Teardown:
    """Writes its file when Python finalises the module holding it (a process's teardown)."""

    def __init__(self, path: str):
        self.path = path

    def __del__(self, _open=os.open, _close=os.close, _flags=os.O_CREAT | os.O_WRONLY) -> None:
        _close(_open(self.path, _flags))  # what it needs bound now: builtins may be gone by then


_HELD: list[_Teardown] = []


class _Marks:
    """A stage whose process leaves a file if Python tears the process down at its exit."""

    def __init__(self, path: str):
        _HELD.append(_Teardown(path))

    def __call__(self, batch: dict) -> dict:
        return batch


@pytest.mark.slow  # two actors on the session's Ray
def test_a_model_actor_leaves_without_pythons_teardown_and_a_driver_keeps_its_exit(ray_local, tmp_path):
    """Ray Data drops a run's model actors when its stream ends: their processes leave without finalising
    torch and transformers (~0.9 s each, waited for by the end of a run on its own Ray). An adapter built
    outside an actor (a driver's) changes nothing of the driver's exit."""
    import psutil
    import ray

    from pipeline.runner.ray_adapter import _on_arrow

    @ray.remote(num_cpus=0)
    class Holder:
        def __init__(self, path: str, actor: bool):
            self.stage = _on_arrow(_Marks, actor=actor)(path)

        def pid(self) -> int:
            return os.getpid()

    def exit_of(actor: bool) -> bool:
        path = tmp_path / f"finalised-{actor}"
        holder = Holder.remote(str(path), actor)
        process = psutil.Process(ray.get(holder.pid.remote()))
        del holder  # as Ray Data drops its pool's actors: the actor exits on its own
        process.wait(timeout=60)
        return path.exists()

    assert exit_of(actor=False)  # the check sees a teardown where there is one
    assert not exit_of(actor=True)

    script = "import sys\nfrom pipeline.runner.ray_adapter import _on_arrow\n" \
             "from tests.integration.test_startup import _Marks\n" \
             f"_on_arrow(_Marks, actor=True)({str(tmp_path / 'driver')!r})\nsys.exit(3)\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert (tmp_path / "driver").exists()  # finalised as usual, no Ray started by the check


@pytest.mark.slow  # a job on its own local Ray in a subprocess
def test_the_end_of_a_run_stops_its_own_ray_and_nothing_else_of_the_caller(tmp_path, ray_dir, shards):
    """A program that runs a job (its own Ray) keeps its other child processes; the Ray is gone."""
    script = f"""
import subprocess, sys
from pipeline.cli import main
other = subprocess.Popen(["sleep", "120"])
code = main(["caption", "--input", {shards!r}, "--output", {str(tmp_path / "out")!r}, "--config", {TINY!r},
             "--set", "run.progress=none"])
print("PROBE", code, other.poll())
other.kill()
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=subprocess_env(ray_dir), capture_output=True,
                          text=True, timeout=300)
    assert "PROBE 0 None" in done.stdout, done.stdout + done.stderr  # the job ran; the caller's `sleep` lives on
    assert leftovers(str(ray_dir)) == []


@pytest.mark.slow  # a dataset on the session's Ray
def test_each_block_reaches_the_driver_while_the_next_is_still_being_made(ray_local, tmp_path):
    """ray_adapter.stream hands the driver each block as soon as it is done: the second of two blocks is
    made only once the driver has the first (a file it creates), or after 20 s without it. Ray Data's
    default iterator held the first until the second existed, so the second would wait out the 20 s."""
    import ray

    from pipeline.runner.ray_adapter import stream

    received = tmp_path / "first-received"

    def make(batch: dict) -> dict:
        import time

        if batch["i"][0] == 1:
            deadline = time.monotonic() + 20
            while not received.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        batch["driver_had_the_first"] = [received.exists()]
        return batch

    ds = ray.data.from_items([{"i": 0}, {"i": 1}], override_num_blocks=2)
    ds = ds.map_batches(make, batch_size=None, num_cpus=0.1)  # the two blocks' tasks run side by side
    seen = {}
    for block in stream(ds):
        i = block["i"][0].as_py()
        seen[i] = block["driver_had_the_first"][0].as_py()
        if i == 0:
            received.touch()
    assert seen == {0: False, 1: True}
