"""What a run reports: the Summary the command prints and `OUT/run.json`."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import Config
from pipeline.io.storage import join
from pipeline.io.writer import write_atomic
from pipeline.job import Job

RUNS = "runs"  # OUT/runs/<run_id>.json: the report of every run into OUT


@dataclass
class Summary:
    output: str
    rows: int
    counts: dict[str, int]
    shards_done: int
    shards_skipped: int
    seconds: float  # the whole command (the CLI: from the process's start, Ray's shutdown included)
    first_block_s: float | None = None  # start → first block at the driver (Ray, actors, model loading)
    # rows after the first block / time after it, over at least run.steady_window_s; None on a shorter run
    steady_images_per_s: float | None = None
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # Ray Data operator → time in it
    shards_total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # what the job's post-run hook reported
    run_id: str | None = None  # the `run_id` column of the rows this run wrote; OUT/runs/<run_id>.json

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("capfilt", "ray", "torch", "transformers", "pyarrow", "fsspec", "s3fs", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def run_defaults(run: dict[str, Any]) -> dict[str, Any]:
    """A run's config as run.json keeps it, as defaults for load_config: without `storage` (redacted there:
    the caller passes its own) and `run` (the wiring of that machine)."""
    base = dict(run.get("config") or {})
    base.pop("storage", None)
    base.pop("run", None)
    return base


def write_report(job: Job, inputs: list[str], cfg: Config, digest: str, summary: Summary) -> None:
    """`OUT/run.json`: config (credentials redacted), models and their revisions, versions, counts, times."""
    report = {
        "run_id": summary.run_id,
        "job": job.name,
        "inputs": inputs,
        "output": summary.output,
        "config": cfg.to_dict(),
        "config_digest": digest,
        "models": job.models,
        "revisions": job.revisions,
        "versions": versions(),
        "shards": {"total": summary.shards_total, "done": summary.shards_done, "skipped": summary.shards_skipped},
        "rows": summary.rows,
        "counts": summary.counts,
        "seconds": round(summary.seconds, 3),
        "images_per_s": round(summary.images_per_s, 3),
        "first_block_s": None if summary.first_block_s is None else round(summary.first_block_s, 3),
        "steady_images_per_s": None if summary.steady_images_per_s is None else round(summary.steady_images_per_s, 3),
        "stages": summary.stages,
        **summary.extra,
    }
    data = json.dumps(report, indent=2, default=str).encode()
    # Every run's report is kept (a resume or a retry never overwrites an earlier one); run.json is the last.
    if summary.run_id:
        write_atomic(join(summary.output, RUNS, f"{summary.run_id}.json"), data, cfg.storage)
    write_atomic(join(summary.output, "run.json"), data, cfg.storage)
