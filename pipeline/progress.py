"""Progress: a live line (images done, img/s, ETA, the busiest stage) on a terminal, plain log lines otherwise."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

import pyarrow as pa

from pipeline.schema import BUSY

log = logging.getLogger("capfilt")


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

def fmt_rate(x: float) -> str:
    """1234.5 → "1234.5", 0.0433 → "0.0433": a slow CPU run of a full-size model is not "0.0 img/s"."""
    return f"{x:.1f}" if x >= 1 else f"{x:.3g}"


def stage_seconds(table: pa.Table) -> dict[str, float]:
    """The stage seconds a block carries (schema.BUSY), summed over its rows: {} where it has none."""
    out: dict[str, float] = {}
    if BUSY in table.column_names:
        for v in table[BUSY].to_pylist():
            if v:
                for k, x in json.loads(v).items():
                    out[k] = out.get(k, 0.0) + float(x)
    return out


class Progress:
    """`update()` after each block; the ETA extrapolates rows per shard from the shards done so far."""

    def __init__(self, shards_total: int, mode: str = "auto", log_every_s: float = 10.0,
                 stream: TextIO = sys.stderr):
        self.shards_total, self.stream = shards_total, stream
        self.mode = ("bar" if stream.isatty() else "log") if mode == "auto" else mode
        self.log_every_s = log_every_s
        self.start = time.monotonic()
        self.last = 0.0
        self.rows = 0
        self.shards_done = 0
        self.busy: dict[str, float] = {}  # stage → seconds its workers spent on the rows that arrived

    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return self.rows / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        if not self.shards_done or not self.rate():
            return None
        total = self.rows / self.shards_done * self.shards_total
        return max(0.0, (total - self.rows) / self.rate())

    def busiest(self) -> str:
        """The stage that took the largest share of the stages' time so far (summed over its workers)."""
        total = sum(self.busy.values())
        if not total:
            return ""
        name = max(self.busy, key=lambda k: self.busy[k])
        return f" | busiest {name} {self.busy[name] / total:.0%}"

    def line(self) -> str:
        return (f"{self.rows} images | {self.shards_done}/{self.shards_total} shards | "
                f"{fmt_rate(self.rate())} img/s | ETA {_fmt_eta(self.eta())}{self.busiest()}")

    def update(self, rows: int, shards_done: int, busy: dict[str, float] | None = None) -> None:
        self.rows += rows
        self.shards_done = shards_done
        for k, v in (busy or {}).items():
            self.busy[k] = self.busy.get(k, 0.0) + v
        now = time.monotonic()
        if self.mode == "bar" and now - self.last >= 0.2:
            self.stream.write("\r\033[K" + self.line())
            self.stream.flush()
            self.last = now
        elif self.mode == "log" and now - self.last >= self.log_every_s:
            log.info("progress: %s", self.line())
            self.last = now

    def close(self) -> None:
        if self.mode == "bar":
            self.stream.write("\r\033[K" + self.line() + "\n")
            self.stream.flush()
