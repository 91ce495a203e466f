"""Builds the Ray Data graph from a job's stages and runs it; the one place that calls map_batches."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa

from pipeline.batch import to_arrow, to_numpy
from pipeline.config import Config, ConfigError, ModelConfig
from pipeline.image import Target
from pipeline.io.shards import list_shards
from pipeline.io.storage import join
from pipeline.io.writer import ShardCommitter, committed_shards, shard_ids, write_atomic
from pipeline.progress import Progress
from pipeline.schema import KEY, META, SOURCE, STATUS

log = logging.getLogger("capfilt")


@dataclass(frozen=True)
class StageSpec:
    """A stage and the resources Ray gives it. `actor=True` for stages that load a model."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    actor: bool = False
    batch_size: int | None = 32  # None: each block as it comes
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int | None = None


def model_stage(stage: Callable[..., Any], args: tuple[Any, ...], m: ModelConfig) -> StageSpec:
    """An actor-pool stage sized from a model's config section."""
    return StageSpec(stage, args, actor=True, batch_size=m.batch_size, num_cpus=m.num_cpus, num_gpus=m.num_gpus,
                     concurrency=m.concurrency)


def decode_stage(cfg: Config, targets: dict[str, Target]) -> tuple[StageSpec, dict[str, str]]:
    """One decode for every model of the job: equal targets share a pixel column.
    Returns the stage and role → pixel column."""
    from pipeline.stages.decode import DecodeImages

    unique: dict[tuple[Any, ...], Target] = {}
    columns: dict[str, str] = {}
    for role, t in targets.items():
        spec = (t.height, t.width, t.mode, t.shortest_edge, t.resample)
        if spec not in unique:
            unique[spec] = replace(t, name=f"pixels_{role}")
        columns[role] = unique[spec].name
    d = cfg.decode
    if d.device == "cuda":
        import importlib.util

        if importlib.util.find_spec("torchvision") is None:
            raise ConfigError("config: decode.device: 'cuda' needs torchvision (torchvision.io.decode_jpeg), which is "
                              "not installed here; install the torchvision that matches your torch, or use 'cpu'")
    # Fused with the read (see _read), decode takes each read block whole: Ray fuses a read with a map
    # only when the map asks for no batch size of its own.
    stage = StageSpec(DecodeImages, (d, tuple(unique.values())), batch_size=None if read_fused(cfg) else d.batch_size,
                      num_cpus=d.num_cpus, concurrency=d.concurrency)
    return stage, columns


@dataclass(frozen=True)
class Job:
    name: str
    stages: list[StageSpec]
    tables: dict[str, pa.Schema]  # output folder under OUT → its schema
    sections: tuple[str, ...]  # config sections that shape the output (for the config digest)
    models: dict[str, str] = field(default_factory=dict)  # role → model id, for run.json
    finish: Callable[[Config, str], dict[str, Any]] | None = None  # after every shard is committed

    def columns(self) -> list[str]:
        # key/source/status/meta always travel to the driver: the committer reads shard-end rows from them.
        names = [KEY, SOURCE, STATUS, META, *(n for schema in self.tables.values() for n in schema.names)]
        return list(dict.fromkeys(names))


@dataclass
class Summary:
    output: str
    rows: int
    counts: dict[str, int]
    shards_done: int
    shards_skipped: int
    seconds: float
    first_block_s: float | None = None  # start → first block at the driver (Ray, actors, model loading)
    steady_images_per_s: float | None = None  # rows after the first block / time after it
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # Ray Data operator → time in it

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class _OnArrow:
    """Runs a numpy-batch stage on Arrow blocks, converting with our column types (see batch.py)."""

    stage_cls: Any = None
    keep: list[str] | None = None  # the last stage drops what the driver does not need (pixels above all)

    def __init__(self, *args: Any):
        self.stage = self.stage_cls(*args)

    def __call__(self, table: pa.Table) -> pa.Table:
        out = self.stage(to_numpy(table))
        if self.keep is not None:
            out = {k: out[k] for k in self.keep}
        return to_arrow(out)


def _on_arrow(stage_cls: Any, keep: list[str] | None = None) -> type:
    # Named after the stage, so Ray's progress lines and errors show `CaptionImages`, not the adapter.
    return type(stage_cls.__name__, (_OnArrow,), {"stage_cls": stage_cls, "keep": keep, "__module__": __name__})


def read_fused(cfg: Config) -> bool:
    """Whether each read runs fused with decode in one task: `input.num_cpus` null (the default)."""
    return cfg.input.num_cpus is None


def _read(source: Any, shards: int, cfg: Config) -> Any:
    """The read op, set up so that Ray fuses it with the decode stage that follows.

    One block count per shard: Ray would otherwise split each read's output (for parallelism our
    reader already gives, block by block), and a split read is never fused. Same CPUs, concurrency
    and scheduling as the decode tasks (see _apply): fusion needs equal remote args."""
    import ray

    if read_fused(cfg):
        return ray.data.read_datasource(source, num_cpus=cfg.decode.num_cpus, override_num_blocks=shards,
                                        concurrency=cfg.decode.concurrency)
    return ray.data.read_datasource(source, num_cpus=cfg.input.num_cpus, override_num_blocks=shards)


def _apply(ds: Any, spec: StageSpec, keep: list[str] | None = None) -> Any:
    """Ray-specific wiring of one stage (Ray's map_batches arguments churn between releases)."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    kwargs: dict[str, Any] = dict(batch_size=spec.batch_size, num_cpus=spec.num_cpus, batch_format="pyarrow")
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing retry limits as remote args but has no named parameter for them.
        warnings.simplefilter("ignore", DeprecationWarning)
        if spec.actor:
            if spec.num_gpus:
                kwargs["num_gpus"] = spec.num_gpus
            # A crashed actor is restarted and its batch retried, but not forever: Ray's default is
            # unbounded, which a poison input would turn into an endless loop.
            return ds.map_batches(_on_arrow(spec.fn, keep), fn_constructor_args=spec.args,
                                  compute=ActorPoolStrategy(size=spec.concurrency or 1),
                                  max_restarts=2, max_task_retries=2, **kwargs)
        fn = _on_arrow(spec.fn, keep)(*spec.args)  # a stateless stage: built once here, shipped to the tasks
        compute = TaskPoolStrategy(size=spec.concurrency) if spec.concurrency else None
        # Ray's task default of 3 retries (system failures only) and the read's SPREAD scheduling: equal
        # remote args let Ray fuse this stage with the read (see _read).
        return ds.map_batches(fn, compute=compute, scheduling_strategy="SPREAD", **kwargs)


def stage_times(ds: Any) -> dict[str, dict[str, float]]:
    """Time spent in each operator of a finished run, from Ray Data's own stats: `busy_s` sums its
    tasks' wall time (across workers, so it can exceed the run), `udf_s` the time in our code.

    Ray's stats summary is not a public API; a release that changes it costs this report, not the run."""
    try:
        out = {}
        todo = [ds._get_stats_summary()]
        while todo:  # the summary of the last operator chain, with the earlier ones as its parents
            summary = todo.pop()
            todo += summary.parents
            for op in summary.operators_stats:
                wall, udf = op.wall_time, op.function_body_time
                out[op.operator_name] = {"busy_s": round(wall.sum, 3) if wall else 0.0,
                                         "udf_s": round(udf.sum, 3) if udf else 0.0,
                                         "tasks": int(wall.count) if wall else 0}
        return dict(reversed(out.items()))  # first operator first
    except Exception as e:  # noqa: BLE001 - see the docstring
        log.debug("no stage times: %s", e)
        return {}


class Watchdog:
    """Exits the process (code 3) when no block has arrived for `timeout` seconds.

    Ray retries lost tasks and restarts actors, but a lost node can leave a pipeline waiting for
    resources that never come back; an overnight job must fail loudly, not hang until morning."""

    EXIT_CODE = 3

    def __init__(self, timeout: float):
        self.timeout, self.last = timeout, time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="capfilt-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        if self.timeout > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def beat(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout / 4)):
            idle = time.monotonic() - self.last
            if idle > self.timeout:
                msg = (f"capfilt: no progress for {idle:.0f}s (run.stall_timeout_s={self.timeout:g}): a node or actor "
                       "was probably lost. Committed shards are kept; rerun the same command to resume.")
                log.error(msg)
                sys.stderr.write(msg + "\n")
                sys.stderr.flush()
                os._exit(self.EXIT_CODE)  # the Ray call we wait in may never return: leave now


def init_ray(cfg: Config) -> None:
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        address = cfg.run.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING,
                                      configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=cfg.run.num_cpus, **kwargs)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own line shows images, img/s and ETA
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = 0  # a bad sample is a row with a status, never a dropped block
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("capfilt", "ray", "torch", "transformers", "pyarrow", "fsspec", "s3fs", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def run_job(job: Job, inputs: list[str], output: str, cfg: Config) -> Summary:
    """Plans shards (skipping committed ones), streams them through the stages, commits per shard."""
    start = time.monotonic()
    options = cfg.storage
    shards = list_shards(inputs, cfg.input.format, options)
    ids = shard_ids(shards)
    digest = cfg.digest(job.sections)
    done = committed_shards(output, options)
    for source, marker in done.items():
        if marker.get("config_digest") != digest:
            raise ValueError(f"output {output!r} holds shard {source} written with another config "
                             f"(digest {marker.get('config_digest')} ≠ {digest}); use a new --output")
    todo = [s for s in shards if s.uri not in done]
    skipped = len(shards) - len(todo)
    if skipped:
        log.info("resume: %d of %d shards already committed in %s; %d to do", skipped, len(shards), output, len(todo))
    committer = ShardCommitter(output, job.tables, ids, options, digest, cfg.output.compression)
    progress = Progress(len(todo), cfg.run.progress, cfg.run.log_every_s)
    first_block_at: float | None = None
    first_rows = 0
    stages: dict[str, dict[str, float]] = {}
    if todo:
        init_ray(cfg)
        from pipeline.io.datasource import ShardDatasource

        ds = _read(ShardDatasource(todo, cfg.input, options), len(todo), cfg)
        for i, spec in enumerate(job.stages):
            # The last stage keeps only the output columns: a separate select_columns op would hold
            # blocks back until the end (seen with Ray 2.60), delaying commits and progress.
            ds = _apply(ds, spec, job.columns() if i == len(job.stages) - 1 else None)
        with Watchdog(cfg.run.stall_timeout_s) as watchdog:
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                watchdog.beat()
                rows = committer.add(block)
                if first_block_at is None:
                    first_block_at, first_rows = time.monotonic(), rows
                progress.update(rows, len(committer.committed))
        progress.close()
        stages = stage_times(ds)
        if committer.incomplete():
            raise RuntimeError(f"shards not complete at the end of the run: {committer.incomplete()}")
    else:
        log.info("nothing to do: all %d shards of %s are committed", len(shards), output)
    extra = job.finish(cfg, output) if job.finish is not None else {}
    end = time.monotonic()
    seconds = end - start
    rows_total = sum(committer.counts.values())
    steady = None
    if first_block_at is not None and end - first_block_at > 0:
        steady = (rows_total - first_rows) / (end - first_block_at)
    summary = Summary(output, rows_total, dict(committer.counts), len(committer.committed), skipped, seconds,
                      None if first_block_at is None else first_block_at - start, steady, stages)
    report = {
        "job": job.name,
        "inputs": inputs,
        "output": output,
        "config": cfg.to_dict(),
        "config_digest": digest,
        "models": job.models,
        "versions": versions(),
        "shards": {"total": len(shards), "done": summary.shards_done, "skipped": skipped},
        "rows": summary.rows,
        "counts": summary.counts,
        "seconds": round(seconds, 3),
        "images_per_s": round(summary.images_per_s, 3),
        "first_block_s": None if summary.first_block_s is None else round(summary.first_block_s, 3),
        "steady_images_per_s": None if steady is None else round(steady, 3),
        "stages": stages,
        **extra,
    }
    write_atomic(join(output, "run.json"), json.dumps(report, indent=2, default=str).encode(), options)
    return summary
