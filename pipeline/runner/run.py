"""The run loop: plan (list shards, check the output, skip committed ones), stream, commit per shard, report."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.io.layout import check_inputs, describe
from pipeline.io.shards import Shard, list_shards
from pipeline.io.storage import get_fs, join
from pipeline.io.writer import ShardCommitter, check_writable, committed_shards, shard_ids
from pipeline.job import Finished, Job
from pipeline.runner import quiet
from pipeline.runner.progress import Progress, stage_seconds
from pipeline.runner.report import Summary, write_report
from pipeline.runner.timing import Phases, split_actor_starts
from pipeline.schema import DECODE_TIMEOUT, KEY, MODEL_ERROR, MODEL_OOM, STATUS

log = logging.getLogger("capfilt")


class Watchdog:
    """Exits the process (code 3) when no block has arrived for `timeout` seconds: capfilt's one stall
    guard (Ray Data's own is turned off by the Ray adapter).

    Ray retries lost tasks and restarts actors, but a lost node can leave a pipeline waiting for
    resources that never come back, and a decoder can hang; an overnight job must fail loudly, not
    hang until morning."""

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
                       "was probably lost, or a decoder hung. Committed shards are kept; rerun the same command to resume.")
                quiet.release()
                log.error(msg)
                sys.stderr.write(msg + "\n")
                sys.stderr.flush()
                os._exit(self.EXIT_CODE)  # the Ray call we wait in may never return: leave now


class Stop:
    """SIGTERM/SIGINT (spot preemption, Ctrl-C) as a request to stop: the run commits the shards already
    in flight for up to `grace_s`, starts nothing new, then exits 5 (Stopped). A second signal, or the
    grace running out while the run waits on Ray, exits at once with the same code. Nothing partial is
    ever visible: a shard's files are written whole, and only when all its rows are in."""

    EXIT_CODE = 5

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.signal: str | None = None
        self.at = 0.0
        self._old: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Stop:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._timer is not None:
            self._timer.cancel()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            self._leave(f"capfilt: second {signal.Signals(signum).name}: leaving now. Committed shards are kept; "
                        "rerun the same command to resume.")
        self.signal, self.at = signal.Signals(signum).name, time.monotonic()
        log.warning("%s: committing the shards in flight (up to run.grace_s=%gs), starting no new ones",
                    self.signal, self.grace_s)
        self._timer = threading.Timer(self.grace_s + 10, self._leave, args=(
            f"capfilt: {self.signal}: the shards in flight did not finish within run.grace_s={self.grace_s:g}s; "
            "leaving now. Committed shards are kept; rerun the same command to resume.",))
        self._timer.daemon = True
        self._timer.start()

    def done(self, pending: int) -> bool:
        """Whether a stopping run should leave now: nothing in flight, or the grace is over."""
        return self.signal is not None and (pending == 0 or time.monotonic() - self.at > self.grace_s)

    def _leave(self, msg: str) -> None:
        quiet.release()
        log.error(msg)
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
        os._exit(self.EXIT_CODE)


class Stopped(RuntimeError):
    """The run stopped on a signal, after committing what was in flight."""

    EXIT_CODE = Stop.EXIT_CODE

    def __init__(self, sig: str, uncommitted: list[str], summary: Summary):
        self.summary = summary
        super().__init__(f"stopped by {sig}: {summary.shards_done} shard(s) committed in this run, {len(uncommitted)} "
                         "in flight not committed (nothing of them is visible). Rerun the same command to resume.")


class ShardsFailed(RuntimeError):
    """Shards that failed on infrastructure errors past their retries, or whose columns do not fit the config
    (io/layout.py): nothing of them is committed."""

    EXIT_CODE = 4

    def __init__(self, failed: dict[str, str], summary: Summary):
        self.failed, self.summary = failed, summary
        lines = [f"  {uri}: {why}" for uri, why in sorted(failed.items())]
        super().__init__(f"{len(failed)} shard(s) failed, on infrastructure errors after their retries "
                         "(input.read_retries) or on columns that do not fit the config; nothing of them was committed. "
                         "Rerun the same command (with the setting it names fixed) to read them again; committed shards "
                         "are kept.\n" + "\n".join(lines))


@dataclass(frozen=True)
class Plan:
    shards: list[Shard]
    todo: list[Shard]
    digest: str
    ids: dict[str, str]  # shard URI → output name, never one of another input's markers
    done: dict[str, dict[str, Any]]  # markers already in the output (all runs): URI → marker
    columns: dict[str, Any] = field(default_factory=dict)  # what the inputs are read by (io/layout.py)


def list_checked(job: Job, inputs: list[str], cfg: Config) -> tuple[list[Shard], dict[str, Any]]:
    """The inputs' shards, and the columns they are read by: each input's first Parquet footer (or tar
    sample) checked against the config before Ray starts (InputLayoutError, one line)."""
    firsts: list[Shard] = []
    shards = list_shards(inputs, cfg.input.format, cfg.storage, cfg.input.image_extensions, cfg.input.files_per_shard,
                         firsts=firsts)
    columns = check_inputs(shards, firsts, cfg.input, cfg.storage, job.alt_text)
    log.info("reading %d shard(s): %s", len(shards), describe(columns))
    return shards, columns


def plan(job: Job, inputs: list[str], output: str, cfg: Config) -> Plan:
    """Everything that can be checked before Ray starts: the inputs match shards (FileNotFoundError,
    ValueError), their columns fit the config (InputLayoutError), the output can be written (OutputError),
    and it holds no shard of another config."""
    shards, columns = list_checked(job, inputs, cfg)
    check_writable(output, cfg.storage)
    digest = cfg.digest(job.sections)
    done = committed_shards(output, cfg.storage)
    for source, marker in done.items():
        if marker.get("config_digest") != digest:
            raise ValueError(f"output {output!r} holds shard {source} written with another config "
                             f"(digest {marker.get('config_digest')} ≠ {digest}); use a new --output")
    for s in shards:
        m = done.get(s.uri)
        if m is not None and _changed(s, m):
            raise ValueError(f"input {s.uri} changed since its shard was committed to {output!r} (size {m.get('size')} → "
                             f"{s.size}, ETag {m.get('etag')} → {s.etag}); use a new --output")
    todo = [s for s in shards if s.uri not in done]
    if len(todo) < len(shards):
        log.info("resume: %d of %d shards already committed in %s; %d to do", len(shards) - len(todo), len(shards),
                 output, len(todo))
    return Plan(shards, todo, digest, shard_ids(shards, {m["name"]: uri for uri, m in done.items()}), done, columns)


RETRYABLE = (DECODE_TIMEOUT, MODEL_ERROR, MODEL_OOM)  # what `capfilt retry` runs again


def retry_plan(job: Job, inputs: list[str], output: str, cfg: Config) -> Plan:
    """`capfilt retry`: the committed shards that hold rows whose status is retryable, each limited to
    those rows' keys; the rows are written back into the shard's own files."""
    p = plan(job, inputs, output, cfg)
    table = next(name for name, schema in job.tables.items() if STATUS in schema.names)
    wanted: dict[str, frozenset[str]] = {}
    for uri, marker in p.done.items():
        if not set(RETRYABLE) & set(marker.get("counts", {})):
            continue
        fs, path = get_fs(join(output, table, f"{marker['name']}.parquet"), cfg.storage)
        with fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=[KEY, STATUS])
        t = t.filter(pc.is_in(t[STATUS], value_set=pa.array(RETRYABLE)))
        wanted[uri] = frozenset(t[KEY].to_pylist())
    missing = sorted(set(wanted) - {s.uri for s in p.shards})
    if missing:
        raise ValueError(f"retry: the inputs of {output!r} no longer list {', '.join(missing[:3])}; the rows cannot be read")
    todo = [replace(s, keys=wanted[s.uri]) for s in p.shards if s.uri in wanted]
    log.info("retry: %d rows (%s) in %d shards of %s", sum(len(k) for k in wanted.values()), ", ".join(RETRYABLE),
             len(todo), output)
    return Plan(p.shards, todo, p.digest, {uri: m["name"] for uri, m in p.done.items()}, p.done, p.columns)


def sample_shards(shards: list[Shard], images: int) -> list[Shard]:
    """`capfilt estimate`: about `images` samples, the first ones of up to 16 shards spread over the input
    (shards differ: the first shard alone says little of the rest)."""
    k = min(len(shards), max(1, -(-images // 32)), 16)
    picked = sorted({round(i * (len(shards) - 1) / max(k - 1, 1)) for i in range(k)})
    return [replace(shards[i], limit=-(-images // len(picked))) for i in picked]


def sample_plan(job: Job, inputs: list[str], output: str, cfg: Config, images: int) -> Plan:
    shards, columns = list_checked(job, inputs, cfg)
    check_writable(output, cfg.storage)
    todo = sample_shards(shards, images)
    return Plan(todo, todo, cfg.digest(job.sections), shard_ids(todo), {}, columns)


def _changed(shard: Shard, marker: dict[str, Any]) -> bool:
    """Whether the input under a committed shard's URI is not the one committed (where both sides know)."""
    if marker.get("size") is not None and shard.size is not None and marker["size"] != shard.size:
        return True
    return bool(marker.get("etag") and shard.etag and marker["etag"] != shard.etag)


def new_run_id() -> str:
    """Sortable and unique: the UTC start time and 6 random hex digits (`20261203T172500Z-3fa9c1`)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def run_job(job: Job, inputs: list[str], output: str, cfg: Config, retry: bool = False,
            sample: int | None = None, phases: Phases | None = None, exiting: bool = False) -> Summary:
    """Plans shards (skipping committed ones), streams them through the stages, commits per shard.
    `retry`: runs the retryable rows of committed shards again instead (retry_plan); `sample`: about this
    many images of the input (sample_plan, `capfilt estimate`). `phases`: the command's phases so far
    (the CLI's); run.json records them with this run's. A local Ray this starts, it shuts down; from a
    running Ray it disconnects, unless `exiting` (the process ends when this returns: see ray_start.shutdown)."""
    phases = phases or Phases(from_process_start=False)
    with phases("plan"):
        if sample is not None:
            p = sample_plan(job, inputs, output, cfg, sample)
        else:
            p = retry_plan(job, inputs, output, cfg) if retry else plan(job, inputs, output, cfg)
    run_id = new_run_id()
    committer = ShardCommitter(output, job.tables, p.ids, cfg.storage, p.digest, cfg.output.compression, p.shards,
                               merge=retry, rows_per_part=cfg.output.rows_per_part, run_id=run_id,
                               calibration=job.commit_hook(cfg, output, p.digest) if job.commit_hook else None)
    progress = Progress(len(p.todo), cfg.run.progress, cfg.run.log_every_s, window_s=cfg.run.steady_window_s)
    stopped: str | None = None
    stages: dict[str, dict[str, float]] = {}
    actors: dict[str, float] = {}  # "<stage>.worker_s" / "<stage>.load_s" → the slowest actor's
    warm: dict[str, str] = {}  # a model stage → whether its warm actors were "started" or "reused"
    started_ray = False
    pools: dict[str, list[int]] = {}  # a model stage → its actor pool's [least, most] actors
    if p.todo:
        with phases("ray_start"):  # importing Ray too
            from pipeline.runner import ray_start

            started_ray = ray_start.init_ray(cfg)
            job = job.with_cluster_gpus(ray_start.cluster_gpus())  # model pools up to one actor per GPU
            pools = {s.fn.__name__: [s.actors, s.most_actors] for s in job.stages if s.actor}
            keep_warm_s = ray_start.keep_warm_s(cfg)
            # Warm model actors hold their CPUs (and GPUs) outside the Ray Data pipeline: its limits are the rest
            limits = ray_start.spare(ray_start.model_resources(job)) if keep_warm_s else None
            # With warm models the first block waits for the job's task workers (on a Ray of its own, for
            # the model actor, whose imports theirs would slow on few cores: BENCHMARKS.md): they start now,
            # as many as there are decode tasks beside the warm actors (Ray Data runs no more)
            if started_ray and limits is not None:
                slots = max(int(limits[0] / cfg.decode.num_cpus), 1)
                ray_start.prestart_workers(min(len(p.todo), 8, slots), cfg.decode.num_cpus)
            from pipeline.runner import ray_adapter  # Ray Data, while Ray starts those workers
        streaming = time.monotonic()
        execution = ray_adapter.Execution(job, p.todo, cfg, keep_warm_s, ray_start.model_env(cfg), limits)
        # the filter after Ray's processes started: they keep the real stderr
        with Watchdog(cfg.run.stall_timeout_s) as watchdog, Stop(cfg.run.grace_s) as stop, quiet.filtered(cfg.run.verbose):
            for block in execution.blocks():
                watchdog.beat()
                committing = time.monotonic()
                rows = committer.add(block)
                phases.add("commit", time.monotonic() - committing)
                busy, starts = split_actor_starts(stage_seconds(block))
                for k, v in starts.items():
                    actors[k] = max(actors.get(k, 0.0), v)
                progress.update(rows, len(committer.committed), busy)
                if progress.blocks == 1 and progress.first_at is not None:
                    phases.add("first_block", progress.first_at - streaming)
                if stop.done(len(committer.pending)):
                    stopped = stop.signal
                    break
        if stopped is None:
            committer.release()  # shards held for a calibration that fewer shards than it asked for reached
        committer.write_index()
        progress.close()
        if progress.first_at is not None:
            phases.add("rest_of_stream", time.monotonic() - progress.first_at)
        stages, warm = execution.stage_times(), execution.warm
        if committer.incomplete() and stopped is None:
            raise RuntimeError(f"shards not complete at the end of the run: {committer.incomplete()}")
    else:
        log.info("nothing to do: all %d shards of %s are committed", len(p.shards), output)
    extra: dict[str, Any] = {"input_columns": p.columns}
    if committer.failed:  # the post-run hook needs every shard (a top-fraction cut over part is wrong)
        extra["failed_shards"] = dict(sorted(committer.failed.items()))
    if stopped is not None:
        extra["stopped"] = {"signal": stopped, "uncommitted_shards": committer.incomplete()}
    elif not committer.failed and job.finish is not None:
        with phases("finish"):
            extra.update(job.finish(Finished(cfg, output, p.digest, job.options)))
    if started_ray:
        from pipeline.runner import ray_start

        with phases("shutdown"):
            ray_start.shutdown(cfg, exiting)
    extra["phases"] = {**phases.report(), "total": round(phases.elapsed(), 3)}
    if pools:
        extra["actor_pools"] = pools
    if actors:
        extra["actor_start"] = {k: round(v, 3) for k, v in sorted(actors.items())}
    if warm:
        extra["warm_actors"] = warm
    rows_total = sum(committer.counts.values())
    steady = progress.steady_rate()  # None on a run shorter than run.steady_window_s after its first block
    # The command's time from its start (the process's, for the CLI): start-up to the first block, the
    # work from there to the last block, then the rest (the post-run hook, Ray's shutdown, the report).
    seconds = phases.elapsed()
    first_s = None if progress.first_at is None else progress.first_at - phases.origin
    work_s = None if progress.first_at is None or progress.last_at is None else progress.last_at - progress.first_at
    last_s = progress.last_at - phases.origin if progress.last_at is not None else None
    extra["timing"] = {"startup_s": first_s, "work_s": work_s, "first_block_rows": progress.first_rows,
                       "shutdown_s": None if last_s is None else seconds - last_s,
                       "after_first_block_img_s": (rows_total - progress.first_rows) / work_s if work_s else None}
    markers = {**p.done, **committer.markers}  # the output as a whole: every marker, of this run and the earlier ones
    totals: Counter[str] = Counter()
    for marker in markers.values():
        totals.update(marker.get("counts", {}))
    extra["totals"] = {"shards_committed": len(markers), "shards_failed": len(committer.failed),
                       "rows": sum(totals.values()), "counts": dict(sorted(totals.items()))}
    if any("caption_flags" in m for m in markers.values()):  # candidates by caption flag: this run, and all
        flagged: Counter[str] = Counter()
        for marker in markers.values():
            flagged.update(marker.get("caption_flags", {}))
        extra["caption_flags"] = dict(sorted(committer.flags.items()))
        extra["totals"]["caption_flags"] = dict(sorted(flagged.items()))
    if retry:
        extra["retry"] = {"rows": sum(committer.counts.values()), "shards": len(committer.committed)}
    skipped = len(p.shards) - len(p.todo) if not retry else 0
    summary = Summary(output, rows_total, dict(committer.counts), len(committer.committed), skipped,
                      seconds, first_s, steady, stages,
                      shards_total=len(p.shards), extra=extra, run_id=run_id)
    write_report(job, inputs, cfg, p.digest, summary)
    if stopped is not None:
        raise Stopped(stopped, committer.incomplete(), summary)
    if committer.failed:
        raise ShardsFailed(committer.failed, summary)
    return summary
