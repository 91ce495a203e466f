"""The one module that imports Ray: init, the shard datasource, reads, map_batches, actor pools, stats.

Ray Data's arguments churn between releases (`concurrency` vs `compute`, retry limits as remote args);
keeping every call here means a Ray upgrade touches one file.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.extensions import ArrowTensorArray

from pipeline import quiet
from pipeline.columns import to_arrow, to_numpy
from pipeline.config import Config, InputConfig
from pipeline.io.readers import READ_SCHEMA, read_shard
from pipeline.io.shards import Shard
from pipeline.job import Job, StageSpec, read_fused
from pipeline.progress import stage_seconds
from pipeline.schema import BUSY
from pipeline.timing import actor_start

log = logging.getLogger("capfilt")

# A read(+decode) task whose worker dies is run again this many times, then the run fails: Ray Data's
# default for tasks is forever (max_retries=-1), which a deterministic crash would turn into a loop.
# (Transient read errors are retried inside the task, per shard: see io/readers.read_shard.)
TASK_RETRIES = 3
# A model actor that dies (a hardware fault, a segfault) is restarted up to this many times over the
# run: occasional deaths over a night are survived. Its batch is retried at most BATCH_RETRIES times, so
# a batch that kills every actor it meets fails the run instead of looping (Ray's defaults: forever).
ACTOR_RESTARTS = 10
BATCH_RETRIES = 2


def init_ray(cfg: Config) -> bool:
    """Attaches to `run.address` / RAY_ADDRESS, or starts a local Ray; sets Ray Data up for capfilt.
    Returns whether it connected (False: this process already had Ray, which it keeps)."""
    started = not ray.is_initialized()
    quiet.apply_switches(cfg.run.verbose)
    if started:
        address = cfg.run.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, configure_logging=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A batch job on private data reports no usage statistics to Ray's service. (Ray 2.60's ray.init
            # turns them off itself for a local cluster, except in nightly wheels; this holds whatever
            # the version. A user who wants them runs `ray start`, which follows their setting, and attaches.)
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(num_cpus=cfg.run.num_cpus, **kwargs)
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own line shows images, img/s and ETA
    ctx.print_on_execution_start = False
    ctx.max_errored_blocks = 0  # a bad sample is a row with a status, never a dropped block
    # A model that fails to load for a transient reason (a network blip fetching weights) is loaded again.
    ctx.actor_init_retry_on_errors = True
    ctx.actor_init_max_retries = 2
    # One stall guard: capfilt's (run.Watchdog, `run.stall_timeout_s`, exit 3). Ray's own (30 min by
    # default, or RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S) would otherwise raise first whenever ours is
    # longer or off, and end the run with an ordinary traceback and exit 1.
    ctx.execution_no_progress_timeout_s = -1
    logging.getLogger("ray.data").setLevel(logging.WARNING if cfg.run.verbose else logging.ERROR)
    return started


def shutdown() -> None:
    ray.shutdown()


class ShardDatasource(Datasource):
    """One read task per shard, streaming blocks as our readers yield them.

    Ray's own `read_webdataset`/`read_parquet` drop or fail whole files on a bad member and know nothing
    of our per-row statuses and shard-end rows, so the read tasks call our readers instead."""

    def __init__(self, shards: list[Shard], cfg: InputConfig, options: dict[str, Any]):
        super().__init__()
        self.shards, self.cfg, self.options = shards, cfg, options

    def estimate_inmemory_data_size(self) -> int | None:
        sizes = [s.size for s in self.shards]
        return sum(s for s in sizes if s) or None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [
            ReadTask(
                partial(read_shard, s, self.cfg, self.options),
                BlockMetadata(num_rows=None, size_bytes=s.size, exec_stats=None, input_files=(s.uri,)),
                schema=READ_SCHEMA,
            )
            for s in self.shards
        ]

    def get_name(self) -> str:
        return "ReadShards"


class _OnArrow:
    """Runs a numpy-batch stage on Arrow blocks, converting with our column types (see columns.py)."""

    stage_cls: Any = None
    keep: list[str] | None = None  # the last stage drops what the driver does not need (pixels above all)
    actor = False  # a model actor: its first block reports its start (timing.actor_start)

    def __init__(self, *args: Any, **kwargs: Any):
        constructed = time.monotonic()
        self.stage = self.stage_cls(*args, **kwargs)
        self.start_report = actor_start(self.stage_cls.__name__, constructed, time.monotonic()) if self.actor else {}

    def __call__(self, table: pa.Table) -> pa.Table:
        busy = stage_seconds(table)
        if BUSY in table.column_names:
            table = table.drop_columns([BUSY])
        start = time.perf_counter()
        out = self.stage(to_numpy(table))
        name = self.stage_cls.__name__
        busy[name] = busy.get(name, 0.0) + time.perf_counter() - start
        if self.start_report:
            busy.update(self.start_report)
            self.start_report = {}
        if self.keep is not None:
            out = {k: out[k] for k in self.keep if k != BUSY}
        n = len(next(iter(out.values()))) if out else 0
        if n:  # the block's stage seconds ride on its first row (see schema.BUSY)
            col = np.full(n, None, dtype=object)
            col[0] = json.dumps(busy)
            out[BUSY] = col
        return to_arrow(out, tensor=ArrowTensorArray.from_numpy)


def _on_arrow(stage_cls: Any, keep: list[str] | None = None, actor: bool = False) -> type:
    # Named after the stage, so Ray's progress lines and errors show `CaptionImages`, not the adapter.
    return type(stage_cls.__name__, (_OnArrow,), {"stage_cls": stage_cls, "keep": keep, "actor": actor,
                                                  "__module__": __name__})


def _read(source: Datasource, shards: int, cfg: Config) -> Any:
    """The read op, set up so that Ray fuses it with the decode stage that follows.

    One block count per shard: Ray would otherwise split each read's output (for parallelism our
    reader already gives, block by block), and a split read is never fused. Same CPUs, concurrency
    and scheduling as the decode tasks (see _apply): fusion needs equal remote args."""
    retries = {"max_retries": TASK_RETRIES}
    with warnings.catch_warnings():
        # Ray 2.60 deprecates ray_remote_args for reads but has no named parameter for retries.
        warnings.simplefilter("ignore", DeprecationWarning)
        if read_fused(cfg):
            return ray.data.read_datasource(source, num_cpus=cfg.decode.num_cpus, override_num_blocks=shards,
                                            concurrency=cfg.decode.concurrency, ray_remote_args=retries)
        return ray.data.read_datasource(source, num_cpus=cfg.input.num_cpus, override_num_blocks=shards,
                                        ray_remote_args=retries)


def _apply(ds: Any, spec: StageSpec, keep: list[str] | None = None) -> Any:
    """Ray-specific wiring of one stage: the one call of map_batches."""
    kwargs: dict[str, Any] = dict(batch_size=spec.batch_size, num_cpus=spec.num_cpus, batch_format="pyarrow")
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing retry limits as remote args but has no named parameter for them.
        warnings.simplefilter("ignore", DeprecationWarning)
        if spec.actor:
            if spec.num_gpus:
                kwargs["num_gpus"] = spec.num_gpus
            # A crashed actor is restarted and its batch retried, but not forever (see ACTOR_RESTARTS).
            return ds.map_batches(_on_arrow(spec.fn, keep, actor=True), fn_constructor_args=spec.args,
                                  fn_constructor_kwargs=spec.kwargs, compute=ActorPoolStrategy(size=spec.concurrency or 1),
                                  max_restarts=ACTOR_RESTARTS, max_task_retries=BATCH_RETRIES, **kwargs)
        fn = _on_arrow(spec.fn, keep)(*spec.args, **spec.kwargs)  # a stateless stage: built once here, shipped to the tasks
        compute = TaskPoolStrategy(size=spec.concurrency) if spec.concurrency else None
        # The read's retries and SPREAD scheduling: equal remote args let Ray fuse this stage with the
        # read (see _read).
        return ds.map_batches(fn, compute=compute, scheduling_strategy="SPREAD", max_retries=TASK_RETRIES, **kwargs)


class Execution:
    """A job's stages over some shards as one Ray Data pipeline; `blocks()` streams its output."""

    def __init__(self, job: Job, shards: list[Shard], cfg: Config):
        ds = _read(ShardDatasource(shards, cfg.input, cfg.storage), len(shards), cfg)
        for i, spec in enumerate(job.stages):
            # The last stage keeps only the output columns: a separate select_columns op would hold
            # blocks back until the end (seen with Ray 2.60), delaying commits and progress.
            ds = _apply(ds, spec, [*job.columns(), BUSY] if i == len(job.stages) - 1 else None)
        self.ds = ds

    def blocks(self) -> Iterator[pa.Table]:
        return iter(self.ds.iter_batches(batch_size=None, batch_format="pyarrow"))

    def stage_times(self) -> dict[str, dict[str, float]]:
        """Time spent in each operator of a finished run, from Ray Data's own stats: `busy_s` sums its
        tasks' wall time (across workers, so it can exceed the run), `udf_s` the time in our code.

        Ray's stats summary is not a public API; a release that changes it costs this report, not the run."""
        try:
            out = {}
            todo = [self.ds._get_stats_summary()]
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
