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


def _fmt_eta(seconds: float) -> str:
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
    """`update()` after each block. The rate it shows is the steady rate: rows after the first block (by
    then every stage has produced) over the time since, once that is at least `window_s` seconds — before
    that there is none ("n/a"), and no ETA: a rate that includes Ray's start and the models' loading, or
    one over a few seconds of a backlog decoded while the model loaded, would mislead. The ETA is the
    rows left (rows per shard so far × shards left) at that rate."""

    def __init__(self, shards_total: int, mode: str = "auto", log_every_s: float = 10.0,
                 stream: TextIO | None = None, window_s: float = 10.0):
        self.shards_total = shards_total
        self.stream = stream if stream is not None else sys.stderr
        self.mode = ("bar" if self.stream.isatty() else "log") if mode == "auto" else mode
        self.log_every_s, self.window_s = log_every_s, window_s
        self.start = time.monotonic()
        self.last = 0.0
        self.rows = 0
        self.shards_done = 0
        self.first_at: float | None = None  # when the first block arrived: every stage has produced
        self.first_rows = 0
        self.last_at: float | None = None  # when the last block arrived
        self.blocks = 0
        self.busy: dict[str, float] = {}  # stage → seconds its workers spent on the rows that arrived

    def steady_rate(self, now: float | None = None) -> float | None:
        """Rows after the first block / seconds since it (up to `now`, default the last block), or None
        while that window is shorter than `window_s` or holds fewer than two blocks."""
        end = self.last_at if now is None else now
        if self.first_at is None or end is None or self.blocks < 3:
            return None
        span = end - self.first_at
        if span < max(self.window_s, 1e-9):
            return None
        return (self.rows - self.first_rows) / span

    def eta(self, now: float | None = None) -> float | None:
        rate = self.steady_rate(now)
        if not self.shards_done or not rate:
            return None
        total = self.rows / self.shards_done * self.shards_total
        return max(0.0, (total - self.rows) / rate)

    def busiest(self) -> str:
        """The stage that took the largest share of the stages' time so far (summed over its workers)."""
        total = sum(self.busy.values())
        if not total:
            return ""
        name = max(self.busy, key=lambda k: self.busy[k])
        return f" | busiest {name} {self.busy[name] / total:.0%}"

    def line(self) -> str:
        if self.first_at is None:
            return f"starting: Ray, decoding, the models loading | 0/{self.shards_total} shards"
        now = time.monotonic()
        rate = self.steady_rate(now)
        shown = f"{fmt_rate(rate)} img/s" if rate is not None else "steady rate n/a yet"
        eta = self.eta(now)
        return (f"{self.rows} images | {self.shards_done}/{self.shards_total} shards | {shown} | "
                f"ETA {_fmt_eta(eta) if eta is not None else 'n/a'}{self.busiest()}")

    def update(self, rows: int, shards_done: int, busy: dict[str, float] | None = None) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at, self.first_rows = now, rows
        self.last_at = now
        self.blocks += 1
        self.rows += rows
        self.shards_done = shards_done
        for k, v in (busy or {}).items():
            self.busy[k] = self.busy.get(k, 0.0) + v
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
