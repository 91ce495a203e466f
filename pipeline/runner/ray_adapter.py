"""Ray Data's side of a run: the shard datasource, reads, map_batches, actor pools, warm actors, stats.
(ray_start.py starts Ray, importing its core only.)

Ray Data's arguments churn between releases (`concurrency` vs `compute`, retry limits as remote args);
keeping every call here (and Ray's start in ray_start.py) means a Ray upgrade touches two small files.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, DataContext, ExecutionResources, TaskPoolStrategy
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.extensions import ArrowTensorArray

from pipeline.columns import to_arrow, to_numpy
from pipeline.config import Config, InputConfig
from pipeline.io.readers import READ_SCHEMA, read_shards
from pipeline.io.shards import Shard
from pipeline.job import Job, StageSpec, read_fused
from pipeline.runner.exits import leave
from pipeline.runner.progress import stage_seconds
from pipeline.runner.timing import actor_start
from pipeline.schema import BUSY

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


def configure(cfg: Config, limits: tuple[float, float] | None = None) -> None:
    """Sets Ray Data up for capfilt (Execution does, for every run). `limits`: the CPUs and GPUs its
    pipeline may use (ray_start.spare), or None: the cluster's."""
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
    # Ray Data budgets the cluster's CPUs and GPUs among its operators. Warm model actors hold some of them
    # outside its pipeline: counted as free, they let it run more decode tasks than there are CPUs for (a
    # task waiting on a warm actor gives its CPU back to Ray, which starts a new worker process for the
    # next: ~1 CPU-s of Python and Ray Data while the model works). Its own limit for all but those.
    if limits is not None:
        cpus, gpus = limits
        ctx.execution_options.resource_limits = ExecutionResources.for_limits(cpu=max(cpus, cfg.decode.num_cpus), gpu=gpus)
    else:
        ctx.execution_options.resource_limits = ExecutionResources.for_limits()  # Ray Data's: the cluster's
    logging.getLogger("ray.data").setLevel(logging.WARNING if cfg.run.verbose else logging.ERROR)


# Small shards share a read task up to this many bytes: a task costs its scheduling, a worker's turn and
# its first block's trip, some ms that 1,000 shards of 4 images would otherwise pay a thousand times.
PACK_BYTES = 64 << 20
# ... but never fewer tasks than this many per decode slot of the cluster, so every slot has work and a
# slow task is not the run's tail.
TASKS_PER_SLOT = 2


def pack(shards: list[Shard], slots: int) -> list[list[Shard]]:
    """The shards in read tasks, in order: consecutive small shards together, each task up to PACK_BYTES
    or its share of the input over TASKS_PER_SLOT × `slots` tasks, whichever is less; a shard of unknown
    size, or one that big, alone. img2dataset's shards (10,000 images, ~0.3–1 GB) stay one a task."""
    known = [s.size for s in shards if s.size]
    share = sum(known) // max(TASKS_PER_SLOT * slots, 1) if known else 0
    most = min(PACK_BYTES, share)
    tasks: list[list[Shard]] = []
    group: list[Shard] = []
    held = 0
    for s in shards:
        size = s.size or most + 1
        if group and held + size > most:
            tasks.append(group)
            group, held = [], 0
        group.append(s)
        held += size
    if group:
        tasks.append(group)
    return tasks


class ShardDatasource(Datasource):
    """Read tasks of one shard, or of a few small ones (pack), streaming blocks as our readers yield them.

    Ray's own `read_webdataset`/`read_parquet` drop or fail whole files on a bad member and know nothing
    of our per-row statuses and shard-end rows, so the read tasks call our readers instead. `slots`: the
    decode tasks the cluster runs at once (see pack)."""

    def __init__(self, shards: list[Shard], cfg: InputConfig, options: dict[str, Any], slots: int = 1):
        super().__init__()
        self.shards, self.cfg, self.options, self.slots = shards, cfg, options, slots
        self.tasks = pack(shards, slots)

    def estimate_inmemory_data_size(self) -> int | None:
        sizes = [s.size for s in self.shards]
        return sum(s for s in sizes if s) or None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [
            ReadTask(
                partial(read_shards, group, self.cfg, self.options),
                BlockMetadata(num_rows=None, size_bytes=sum(s.size or 0 for s in group) or None, exec_stats=None,
                              input_files=tuple(s.uri for s in group)),
                schema=READ_SCHEMA,
            )
            for group in self.tasks
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
        self.start_report: dict[str, float] = {}
        if self.actor:
            self.start_report = actor_start(self.stage_cls.__name__, constructed, time.monotonic())
            _exit_without_teardown()

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


def _exit_without_teardown() -> None:
    """In a model actor's process: when it exits (Ray Data drops the pool as the run's stream ends, or
    scales it down), it leaves without Python's teardown of torch and transformers (exits.py), which the
    run's end waits for on a Ray the run started (ray_start.shutdown). Registered last, it runs first of
    the process's exit functions, so Ray's and torch's do not run: Ray has stopped the actor's core worker
    by then, and nothing of the run is left in the process; `leave` flushes the log handlers and stdio."""
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return  # not in an actor: a stage built on a driver (whose own exit and status are its own)
    atexit.unregister(leave)  # once per process
    atexit.register(leave)


def _on_arrow(stage_cls: Any, keep: list[str] | None = None, actor: bool = False) -> type:
    # Named after the stage, so Ray's progress lines and errors show `CaptionImages`, not the adapter.
    return type(stage_cls.__name__, (_OnArrow,), {"stage_cls": stage_cls, "keep": keep, "actor": actor,
                                                  "__module__": __name__})


WARM_NAMESPACE = "capfilt"  # the warm model actors of every run on a Ray, whichever job started them


def _code_version() -> str:
    """capfilt's own files as they are now (paths, sizes, modification times): a warm actor runs the code
    it was started with, so edited code gets new actors."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pipeline/, not runner/ alone
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(x for x in files if x.endswith(".py")):
            st = os.stat(os.path.join(d, f))
            h.update(f"{os.path.relpath(os.path.join(d, f), root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def warm_names(spec: StageSpec, keep: list[str] | None) -> list[str]:
    """The names of a model stage's warm actors (its pool's most: warm pools are fixed): equal for equal stages (class, model
    config, pixel column, options, batch size, resources, output columns) under the same code, so only
    such a run reuses them."""
    key = repr((spec.fn.__module__, spec.fn.__qualname__, spec.args, sorted(spec.kwargs.items()), keep,
                spec.batch_size, spec.num_cpus, spec.num_gpus, _code_version()))
    base = f"capfilt-{spec.fn.__name__}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return [f"{base}-{i}" for i in range(spec.most_actors)]


class _WarmStage:
    """A model stage that outlives runs: a detached, named Ray actor (WARM_NAMESPACE) that loads its model
    once and serves every run with the same stage (warm_names) until it has been idle `keep_s` seconds.

    Ray binds worker processes to a job, so Ray Data's actor pools start (and import torch in) a fresh
    process for every run; a detached actor is Ray's way to keep one across jobs."""

    def __init__(self, stage: type, args: tuple[Any, ...], kwargs: dict[str, Any], batch_size: int | None,
                 keep_s: float):
        self.stage, self.batch_size, self.keep_s = stage(*args, **kwargs), batch_size, keep_s
        self.busy, self.last, self.idle_limit = False, time.monotonic(), keep_s
        threading.Thread(target=self._expire, name="capfilt-keep-warm", daemon=True).start()

    def run(self, table: pa.Table) -> list[pa.Table]:
        """A block, in batches of the stage's batch size, as Ray Data's actor pool would call it."""
        self.busy, self.idle_limit = True, self.keep_s  # in use: a retire() before is void
        try:
            step = self.batch_size or max(table.num_rows, 1)
            return [self.stage(table.slice(i, step)) for i in range(0, table.num_rows, step)]
        finally:
            self.busy, self.last = False, time.monotonic()

    def retire(self, idle_s: float) -> None:
        """Leave once idle for `idle_s` (from the last block): another run's models need the CPUs or GPUs
        this one holds, unless a run still sends it blocks."""
        self.idle_limit = min(self.idle_limit, idle_s)

    def _expire(self) -> None:
        while True:
            time.sleep(0.5)
            if not self.busy and time.monotonic() - self.last > self.idle_limit:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                return


_WARM_HANDLES: dict[str, Any] = {}  # in a task's worker: warm actor name → handle (a GCS lookup saved per block)


class _WarmCall:
    """A warm stage in the run's pipeline: tasks (fused with decode: no process to start for the run) that
    send each block to one of the stage's warm actors, getting it by name, or starting it again."""

    def __init__(self, names: list[str], options: dict[str, Any], init: tuple[Any, ...]):
        self.names, self.options, self.init = names, options, init

    def actor(self, name: str) -> Any:
        """The named warm actor, started if it is not there."""
        return ray.remote(_WarmStage).options(name=name, **self.options).remote(*self.init)

    def __call__(self, table: pa.Table) -> Iterator[pa.Table]:
        name = random.choice(self.names)
        if name not in _WARM_HANDLES:
            _WARM_HANDLES[name] = self.actor(name)
        try:
            parts = ray.get(_WARM_HANDLES[name].run.remote(table))
        except ray.exceptions.RayActorError:
            # Gone for good: retired or expired since the driver found it, or out of restarts (Ray restarts
            # a crashed one and retries the block, see ACTOR_RESTARTS): a new one gets the block, once.
            _WARM_HANDLES[name] = self.actor(name)
            parts = ray.get(_WARM_HANDLES[name].run.remote(table))
        yield from parts


def warm_alive() -> set[str]:
    """The names of capfilt's warm actors alive on this Ray."""
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == WARM_NAMESPACE}


def retire_idle(names: set[str]) -> None:
    """Asks these warm actors to exit once they have idled a few seconds: an earlier run's models would
    otherwise hold CPUs and GPUs this run waits for."""
    for name in names:
        try:
            ray.get_actor(name, namespace=WARM_NAMESPACE).retire.remote(2.0)
        except Exception as e:  # noqa: BLE001 - gone meanwhile, or another version's: not this run's concern
            log.debug("warm actor %s not retired: %s", name, e)


def start_warm(spec: StageSpec, keep: list[str] | None, keep_s: float, runtime_env: dict[str, Any] | None,
               alive: set[str] | None = None) -> tuple[_WarmCall, bool]:
    """The warm actors of a model stage, started now (their models load while the run starts) or found
    among those `alive` (warm_alive(), by default asked now): then `reused`."""
    names = warm_names(spec, keep)
    reused = set(names) <= (warm_alive() if alive is None else alive)
    options = dict(namespace=WARM_NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=spec.num_cpus,
                   num_gpus=spec.num_gpus, max_restarts=ACTOR_RESTARTS, max_task_retries=BATCH_RETRIES,
                   runtime_env=runtime_env)
    # Named after the stage, so Ray's operator names and errors show `CaptionImages`.
    cls = type(spec.fn.__name__, (_WarmCall,), {"__module__": __name__})
    call = cls(names, options, (_on_arrow(spec.fn, keep, actor=True), spec.args, spec.kwargs, spec.batch_size, keep_s))
    for name in names:
        call.actor(name)
    return call, reused


def _read(source: ShardDatasource, cfg: Config) -> Any:
    """The read op, set up so that Ray fuses it with the decode stage that follows.

    One block count per read task: Ray would otherwise split each read's output (for parallelism our
    reader already gives, block by block), and a split read is never fused. Same CPUs, concurrency
    and scheduling as the decode tasks (see _apply): fusion needs equal remote args."""
    retries = {"max_retries": TASK_RETRIES}
    tasks = len(source.tasks)
    with warnings.catch_warnings():
        # Ray 2.60 deprecates ray_remote_args for reads but has no named parameter for retries.
        warnings.simplefilter("ignore", DeprecationWarning)
        if read_fused(cfg):
            return ray.data.read_datasource(source, num_cpus=cfg.decode.num_cpus, override_num_blocks=tasks,
                                            concurrency=cfg.decode.concurrency, ray_remote_args=retries)
        return ray.data.read_datasource(source, num_cpus=cfg.input.num_cpus, override_num_blocks=tasks,
                                        ray_remote_args=retries)


def decode_slots(cfg: Config, limits: tuple[float, float] | None) -> int:
    """How many decode tasks the cluster (or the run's `limits`) runs at once."""
    cpus = limits[0] if limits is not None else float(ray.cluster_resources().get("CPU", 1.0))
    slots = int(cpus / cfg.decode.num_cpus) if cfg.decode.num_cpus else 1
    return max(min(slots, cfg.decode.concurrency or slots), 1)


def _apply(ds: Any, spec: StageSpec, keep: list[str] | None = None, prebuilt: bool = False,
           runtime_env: dict[str, Any] | None = None) -> Any:
    """Ray-specific wiring of one stage: the one call of map_batches. `prebuilt`: `spec.fn` is the task's
    function itself (a warm stage's call), wired like the decode stage whose resources it has.
    `runtime_env`: a model actor's (ray_start.model_env)."""
    kwargs: dict[str, Any] = dict(batch_size=spec.batch_size, num_cpus=spec.num_cpus, batch_format="pyarrow")
    with warnings.catch_warnings():
        # Ray 2.60 deprecates passing retry limits as remote args but has no named parameter for them.
        warnings.simplefilter("ignore", DeprecationWarning)
        if spec.actor:
            if spec.num_gpus:
                kwargs["num_gpus"] = spec.num_gpus
            if runtime_env:
                kwargs["runtime_env"] = runtime_env
            # A crashed actor is restarted and its batch retried, but not forever (see ACTOR_RESTARTS).
            return ds.map_batches(_on_arrow(spec.fn, keep, actor=True), fn_constructor_args=spec.args,
                                  fn_constructor_kwargs=spec.kwargs, compute=pool(spec),
                                  max_restarts=ACTOR_RESTARTS, max_task_retries=BATCH_RETRIES, **kwargs)
        # a stateless stage: built once here, shipped to the tasks
        fn = spec.fn if prebuilt else _on_arrow(spec.fn, keep)(*spec.args, **spec.kwargs)
        compute = TaskPoolStrategy(size=spec.concurrency) if spec.concurrency else None
        # The read's retries and SPREAD scheduling: equal remote args let Ray fuse this stage with the
        # read (see _read).
        return ds.map_batches(fn, compute=compute, scheduling_strategy="SPREAD", max_retries=TASK_RETRIES, **kwargs)


def pool(spec: StageSpec) -> ActorPoolStrategy:
    """A model stage's actor pool: fixed at `concurrency`, or Ray Data's autoscaling pool, from one actor up
    to one per GPU the cluster has for it (Job.with_cluster_gpus): Ray Data adds actors while their inputs
    queue and the GPUs are free, and removes idle ones. With `overlap`, each actor takes two batches at once
    on two threads, which take turns on the device and in the tokenizer (models/turns.py): the next batch's
    CPU work runs while the device works on this one. (Ray Data's default runs one call at a time and
    overlaps only its own block fetching.)"""
    calls: dict[str, Any] = {"max_concurrent_calls_per_actor": 2, "enable_true_multi_threading": True} if spec.overlap else {}
    if spec.most_actors > spec.actors:
        return ActorPoolStrategy(min_size=spec.actors, max_size=spec.most_actors, **calls)
    return ActorPoolStrategy(size=spec.actors, **calls)


def stream(ds: Any) -> Iterator[pa.Table]:
    """The dataset's output blocks, each as soon as it is done. Ray Data's iterator, with its default
    `prefetch_batches=1`, hands a block over only once the next one is ready too (or the stream has ended):
    every block reached the driver a block late — the first of a small job ~0.6 s after it was done, a
    shard's last block (its commit, its progress) waiting on the next shard's first. Blocks here are
    small (the last stage keeps the output columns, never pixels), so fetching each as it is asked for
    costs nothing the executor, which runs on in its own thread, waits on."""
    return iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0))


class Execution:
    """A job's stages over some shards as one Ray Data pipeline; `blocks()` streams its output.
    `keep_warm_s` > 0 (ray_start.keep_warm_s): the model stages run on warm actors that outlive the run
    (`warm`: stage → "started" or "reused"); else on Ray Data's actor pools, started for this run.
    `model_env`: the model actors' runtime env (ray_start.model_env); `limits`: the CPUs and GPUs of the
    Ray Data pipeline (configure)."""

    def __init__(self, job: Job, shards: list[Shard], cfg: Config, keep_warm_s: float = 0.0,
                 model_env: dict[str, Any] | None = None, limits: tuple[float, float] | None = None):
        configure(cfg, limits)
        ds = _read(ShardDatasource(shards, cfg.input, cfg.storage, decode_slots(cfg, limits)), cfg)
        self.warm: dict[str, str] = {}
        alive, used = warm_alive(), set()  # on a running Ray, earlier runs' warm actors may idle there
        for i, spec in enumerate(job.stages):
            # The last stage keeps only the output columns: a separate select_columns op would hold
            # blocks back until the end (seen with Ray 2.60), delaying commits and progress.
            keep = [*job.columns(), BUSY] if i == len(job.stages) - 1 else None
            if spec.actor and keep_warm_s > 0:
                call, reused = start_warm(spec, keep, keep_warm_s, model_env, alive)
                used |= set(call.names)
                self.warm[spec.fn.__name__] = "reused" if reused else "started"
                ds = _apply(ds, replace(job.stages[0], fn=call, args=(), kwargs={}, batch_size=None), prebuilt=True)
            else:
                ds = _apply(ds, spec, keep, runtime_env=model_env)
        retire_idle(alive - used)
        self.ds = ds

    def blocks(self) -> Iterator[pa.Table]:
        return stream(self.ds)

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


class ClusterStages:
    """`capfilt dedup`'s semantic pass on Ray Data (pipeline/dedup/cluster.py has the logic): `items`
    (one per file) read by `reader(shared, options)` in a task each, then either filtered (the k-means
    sample) or written by bucket and each bucket handed whole to a function in a task of its own. State
    the tasks share (masks, centroids) goes through the object store once and is built into the stage once
    per worker process."""

    def __init__(self, items: list[dict[str, Any]], reader: type, shared: Any, options: dict[str, Any]):
        self.ds = ray.data.from_items(items, override_num_blocks=max(len(items), 1)).map_batches(
            _built_once(reader, ray.put(shared), options), batch_size=1, batch_format="numpy")

    def filtered(self, stage: type, state: Any) -> Iterator[dict[str, np.ndarray]]:
        """The rows `stage(state)` keeps, as numpy batches."""
        return iter(self.ds.map_batches(_built_once(stage, ray.put(state)), batch_format="numpy")
                    .iter_batches(batch_format="numpy", batch_size=4096))

    def spilled_then_per_bucket(self, stage: type, state: Any, buckets: list[Any],
                                fn: Any) -> Iterator[dict[str, np.ndarray]]:
        """`stage(state)` writes every read row to its bucket (and returns counts); once all are written,
        `fn` runs on each bucket in a task of its own (a batch {"bucket": [b]}), its results streamed back."""
        for _ in self.ds.map_batches(_built_once(stage, ray.put(state)), batch_format="numpy").iter_batches(
                batch_format="numpy", batch_size=None):
            pass
        per_bucket = ray.data.from_items([{"bucket": b} for b in buckets], override_num_blocks=max(len(buckets), 1))
        return iter(per_bucket.map_batches(fn, batch_size=1, batch_format="numpy")
                    .iter_batches(batch_format="numpy", batch_size=None))


def _built_once(cls: type, ref: Any, *args: Any) -> Any:
    """`cls(ray.get(ref), *args)` as a task function, built once per worker process."""
    built: dict[str, Any] = {}

    def run(batch: dict[str, np.ndarray]) -> Any:
        if "fn" not in built:
            built["fn"] = cls(ray.get(ref), *args)
        return built["fn"](batch)

    run.__name__ = cls.__name__  # Ray Data's operator names
    return run
