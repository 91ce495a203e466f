"""Starts Ray for a run, or attaches to a running one, importing Ray's core only: the worker processes Ray
starts for the run come up while the driver goes on to import Ray Data (ray_adapter.py, ~0.5 s), instead
of after it."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any

import psutil
import ray

from pipeline.config import Config
from pipeline.job import Job
from pipeline.runner import quiet


def init_ray(cfg: Config) -> bool:
    """Attaches to `run.address` / RAY_ADDRESS, or starts a local Ray. Returns whether it connected
    (False: this process already had Ray, which it keeps)."""
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
            for key, value in _FAST_START.items():
                os.environ.setdefault(key, value)
            ray.init(num_cpus=cfg.run.num_cpus, **kwargs)
    return started


# Ray's system config (RayConfig, read from RAY_<name> by each of its processes) for a Ray this process
# starts: the raylet's first connection to its own object store, whose thread is still starting, fails, and
# Ray waits 1 s (raylet_client_connect_timeout_milliseconds) before the retry; ray.init looks for the
# registered raylet once per second (GlobalStateAccessor::GetNode), so a raylet later than 1 s costs the
# start a whole second more (2.3 → 3.3 s: 1 in 6 starts idle, 3 in 8 within a job). Retrying every 0.1 s as
# many times (10 s in all, Ray's default) keeps it under the second.
_FAST_START = {"RAY_raylet_client_connect_timeout_milliseconds": "100", "RAY_raylet_client_num_connect_attempts": "100"}


def shutdown(cfg: Config, exiting: bool = False) -> None:
    """Ends this process's part in the Ray `init_ray` connected it to (it returned True).

    A running Ray it attached to: disconnects, or, where the process exits right after (`exiting`: the
    CLI), leaves that to the exit. Ray marks a driver's job finished and stops the job's workers when the
    driver's connection closes, as it does on ray.shutdown's disconnect, which costs ~0.3 s more
    (BENCHMARKS.md: attached and warm, 4.45 → 4.1 s).

    A Ray it started: stops it, every process of it gone on return. Ray's shutdown returns once it has
    signalled them, while its workers (a model actor and its GPU memory) may still be exiting; they are
    waited for, and killed after `EXIT_WAIT_S`.

    Ray stops its own processes one after another, giving each 1 s to leave on SIGTERM, the GCS before its
    autoscaler's monitor; the monitor spends that second trying to report its own termination to the GCS
    that is gone (ray/autoscaler/_private/monitor.py, `_signal_handler`) and is then killed: 1 s of every
    command. A Ray of one run has nothing to autoscale, so the monitor is killed first."""
    if _attached(cfg):
        if not exiting:
            ray.shutdown()
        return
    processes = _ray_processes()
    for p in processes:
        with contextlib.suppress(psutil.Error):  # gone already
            if any(arg.endswith(_MONITOR) for arg in p.cmdline()):
                p.kill()
    ray.shutdown()
    deadline = time.monotonic() + EXIT_WAIT_S
    while processes:
        processes = [p for p in processes if _alive(p)]  # polled: most are the raylet's children, not ours
        if processes and time.monotonic() > deadline:
            for p in processes:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            break
        time.sleep(0.02)


def _ray_processes() -> list[psutil.Process]:
    """The processes of the Ray this process started: those ray.init started (GCS, raylet, monitor, dashboard,
    log monitor: their programs are in Ray's package) and theirs (the workers and agents the raylet
    started). Not this process's other children, which are not Ray's to stop."""
    ray_dir = os.path.dirname(ray.__file__)
    found: list[psutil.Process] = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if any(arg.startswith(ray_dir) for arg in child.cmdline()):
                found += [child, *child.children(recursive=True)]
    return found


def _alive(p: psutil.Process) -> bool:
    try:  # is_running: False too for a pid the system gave to a new process since
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone
        return False


EXIT_WAIT_S = 10.0
_MONITOR = os.path.join("ray", "autoscaler", "_private", "monitor.py")


def _attached(cfg: Config) -> bool:
    return bool(cfg.run.address or os.environ.get("RAY_ADDRESS"))


def model_env(cfg: Config) -> dict[str, Any] | None:
    """The runtime env of model actors on a running Ray: its workers have its environment, not this
    process's, so quiet's switches travel with them. (Not the job's runtime env: that would cost every
    task's worker a runtime-env setup, ~0.3 s on the way to the first block.)"""
    env = {k: os.environ[k] for k in quiet.ENV if k in os.environ}
    return {"env_vars": env} if env and _attached(cfg) else None


def keep_warm_s(cfg: Config) -> float:
    """How long this run's model actors stay loaded after it (run.keep_warm_s), or 0: only on a Ray this run
    attached to by address that has one node — the Ray that outlives the run, on the machine of the person
    running many small jobs (`ray start --head`); never on a Ray this process started (it ends with the
    run) or a multi-node cluster (where idle warm actors would hold GPUs other jobs wait for)."""
    if cfg.run.keep_warm_s <= 0 or not _attached(cfg):
        return 0.0
    return cfg.run.keep_warm_s if sum(1 for n in ray.nodes() if n.get("Alive")) == 1 else 0.0


def model_resources(job: Job) -> tuple[float, float]:
    """The CPUs and GPUs of the job's model actors, all of them."""
    models = [s for s in job.stages if s.actor]
    return sum(s.num_cpus * s.most_actors for s in models), sum(s.num_gpus * s.most_actors for s in models)


def cluster_gpus() -> float:
    """The GPUs of the Ray this run is on (all its nodes')."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def spare(held: tuple[float, float]) -> tuple[float, float]:
    """The Ray's CPUs and GPUs but those `held` (by warm model actors: model_resources): what the run's
    Ray Data pipeline may use."""
    total = ray.cluster_resources()
    return max(total.get("CPU", 0.0) - held[0], 0.0), max(total.get("GPU", 0.0) - held[1], 0.0)


def _ready() -> None:
    """In a worker of the run: the modules its read and decode tasks unpickle, imported ahead."""
    import pipeline.runner.ray_adapter  # noqa: F401 - Ray Data, the datasource, the stage adapters
    import pipeline.stages.decode  # noqa: F401


def prestart_workers(n: int, num_cpus: float) -> None:
    """Has Ray start `n` worker processes for this run now, each importing what the run's tasks will, so
    they are ready when the first tasks come (~1 s of the way to the first block). Ray prestarts workers for
    the first driver of a Ray it starts, but not for a job attached to a running one, and never imports
    anything of ours in them. Fire and forget: the run's tasks reuse these processes."""
    task = ray.remote(_ready).options(num_cpus=num_cpus)
    for _ in range(n):
        task.remote()
