"""What the driver does not do: import torch or transformers for a job whose models are local directories
or tiny presets (the models' actors import them; the driver reads JSON), start Ray for `--help`, a config
error or `inspect`. Checked in a subprocess by the modules it imported; and run.json's phases."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.paths import CONFIGS, ROOT, TINY
from tests.fixtures.processes import subprocess_env
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
