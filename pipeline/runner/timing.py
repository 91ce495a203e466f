"""Where a command's time goes: its phases, from the process's start to its end, for `run.json`.

The driver's phases are timed here (`Phases`); a model actor times its own start (`actor_start`), and the
first block it emits carries that to the driver (keys `@<stage>.<what>` among the block's stage seconds,
progress.stage_seconds)."""

from __future__ import annotations

import os
import time
from typing import Any


def process_age() -> float | None:
    """Seconds since this process started (Linux: /proc), so the interpreter's start and the imports
    before any of our code ran are counted; None where /proc is not there."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, after `comm`
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Phases:
    """Named, timed phases of the driver, in the order they ran (`with phases("plan"): ...`). The origin is
    the process's start (the CLI: the whole command), or now (a run started from Python)."""

    def __init__(self, from_process_start: bool = True) -> None:
        age = process_age() if from_process_start else None
        now = time.monotonic()
        self.origin = now - age if age is not None else now
        self.seconds: dict[str, float] = {}
        if age is not None:
            self.seconds["interpreter_imports"] = age  # python, capfilt's and the libraries' imports, argv

    def __call__(self, name: str) -> _Timed:
        return _Timed(self, name)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def elapsed(self) -> float:
        """Seconds since the origin: the whole command so far."""
        return time.monotonic() - self.origin

    def report(self) -> dict[str, Any]:
        return {k: round(v, 3) for k, v in self.seconds.items()}


class _Timed:
    def __init__(self, phases: Phases, name: str):
        self.phases, self.name = phases, name

    def __enter__(self) -> _Timed:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.phases.add(self.name, time.monotonic() - self.start)


ACTOR_KEY = "@"  # a stage-seconds key that reports an actor's start, not time spent on rows


def actor_start(stage: str, constructed_at: float, loaded_at: float) -> dict[str, float]:
    """An actor's start, as keys of a block's stage seconds: `worker_s`, from its process's start to our
    stage's construction (Python, Ray's worker, unpickling the stage: torch/transformers imports);
    `load_s`, the stage's construction (model weights and processor)."""
    age = process_age()
    worker = (age - (time.monotonic() - constructed_at)) if age is not None else 0.0
    return {f"{ACTOR_KEY}{stage}.worker_s": max(0.0, worker), f"{ACTOR_KEY}{stage}.load_s": loaded_at - constructed_at}


def split_actor_starts(busy: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(stage seconds, actor-start reports) of a block's stage seconds."""
    starts = {k[len(ACTOR_KEY):]: v for k, v in busy.items() if k.startswith(ACTOR_KEY)}
    return {k: v for k, v in busy.items() if not k.startswith(ACTOR_KEY)}, starts
