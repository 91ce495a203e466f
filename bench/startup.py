"""Start-up (`--only startup`): what a small job costs as a person runs it — the whole command, from the
process's start to its exit, measured around it — phase by phase (run.json's `phases`), today's code side
by side with the code before the start-up work, on a fresh local Ray and attached to a running one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from bench.data import iter_web_jpegs, write_shards
from tests.fixtures.processes import RunningRay, subprocess_env

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
BASELINE = "a16aa24"  # the last commit before the start-up work (issue #16): "before"


def source_tree(ref: str, dest: Path) -> Path | None:
    """The repository's files at `ref` (git archive) in `dest`: the code "before", run side by side."""
    try:
        data = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _env(tree: Path, ray_tmp: Path) -> dict[str, str]:
    return subprocess_env(ray_tmp, PYTHONPATH=str(tree))  # the tests' env for a CLI with its own local Ray


def run_command(tree: Path, job: str, config: Path, inputs: str, out: Path, ray_tmp: Path,
                extra: tuple[str, ...] = (), **env: str) -> dict[str, Any]:
    """`capfilt <job>` as a user runs it (`python -m pipeline`, the code of `tree`), timed around the process."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", job, "--input", inputs, "--output", str(out), "--config", str(config),
           "--set", "run.progress=none", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=tree, env={**_env(tree, ray_tmp), **env}, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} exited {done.returncode}: {done.stderr[-2000:]}")
    run = json.loads((out / "run.json").read_text())
    return {"wall_s": wall, "rows": run["rows"], "img_s": run["rows"] / wall, "run_json_seconds": run["seconds"],
            "first_block_s": run["first_block_s"], "outside_run_json_s": wall - run["seconds"],
            "phases": run.get("phases"), "actor_start": run.get("actor_start"), "warm_actors": run.get("warm_actors"),
            "end_line": next((x for x in done.stdout.splitlines() if " rows (" in x), "")}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median whole-command time (its phases with it), and every run's time."""
    ranked = sorted(runs, key=lambda r: r["wall_s"])
    return {**ranked[(len(ranked) - 1) // 2], "wall_s_runs": [round(r["wall_s"], 2) for r in runs]}


def bench_startup(work: Path, quick: bool = False, baseline: str = BASELINE) -> dict[str, Any]:
    """A 100-image `caption` (configs/tiny.yaml) and an 800-image `embed` (configs/tiny-embed.yaml) of web
    JPEGs, whole commands: the code before (`baseline`) and today's, alternating, on a fresh local Ray each,
    3 times (the median run reported: this machine's neighbours move single runs by ±1 s); then the caption
    job attached to a running local Ray (`ray start --head`): its first job, and the median of 3 after it."""
    n_caption, n_embed = (40, 160) if quick else (100, 800)
    reps = 1 if quick else 3
    caption_in = write_shards(iter_web_jpegs(n_caption, seed=7), work / "startup-caption", n_caption // 4)
    embed_in = write_shards(iter_web_jpegs(n_embed, seed=8), work / "startup-embed", n_embed // 8)
    trees = {"after": ROOT}
    before = source_tree(baseline, work / "before")
    if before is not None:
        trees = {"before": before, "after": ROOT}
    ray_tmp = Path(tempfile.mkdtemp(prefix="cfb", dir="/tmp"))
    res: dict[str, Any] = {"baseline": baseline if before is not None else None, "images_caption": n_caption,
                           "images_embed": n_embed, "repeats": reps}
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for label, tree in trees.items():  # a warm-up of each: the page cache, the tiny models' files
            run_command(tree, "caption", CONFIGS / "tiny.yaml", caption_in, work / f"warm-{label}", ray_tmp)
        for _ in range(reps):
            for label, tree in trees.items():
                runs.setdefault(f"caption_{label}", []).append(run_command(
                    tree, "caption", CONFIGS / "tiny.yaml", caption_in, work / f"cap-{label}", ray_tmp))
                runs.setdefault(f"embed_{label}", []).append(run_command(
                    tree, "embed", CONFIGS / "tiny-embed.yaml", embed_in, work / f"emb-{label}", ray_tmp))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    for label, tree in trees.items():
        with RunningRay(PYTHONPATH=str(tree)) as ray:  # its workers import the same tree's code
            for i in range(1 + reps):
                runs.setdefault(f"caption_{label}_attached_{min(i + 1, 2)}", []).append(run_command(
                    tree, "caption", CONFIGS / "tiny.yaml", caption_in, work / f"att-{label}-{i}", ray.tmp,
                    ("--address", ray.address), **ray.client_env()))
    return {**res, **{k: median_run(v) for k, v in runs.items()}}
