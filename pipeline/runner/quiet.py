"""A normal run's stderr holds capfilt's own lines and errors. The libraries' notices a user did not ask for
are turned off at their own switches (environment variables, logger levels) where they have one; the one
line Ray's C++ core worker writes straight to file descriptor 2, which no switch reaches, is filtered out
by its pattern while Ray runs. `run.verbose` (`--verbose`) leaves everything on."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The libraries' own switches, for this process and the workers of a local Ray it starts (they inherit
# its environment); a value the user set wins.
ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' bars: "Loading weights" (every model actor), "Writing model shards"
    "TRANSFORMERS_VERBOSITY": "error",
}
# Loggers and the level they show from: Ray's warnings are notices (its token-auth notice, Ray Data's
# "Progress bars disabled" and "experimental" remarks), their errors still show; matplotlib's INFO lines
# (`inspect --html`: "generated new fontManager" on its first use) are notes on its own cache.
LOGGERS = {"ray": logging.ERROR, "ray.data": logging.ERROR, "matplotlib": logging.WARNING}

# Ray Data passes each actor its map function by reference, and Ray's core worker logs an error for every
# restartable actor created so (ray-project/ray#53727): a false alarm here, as the operator holds the
# reference for the whole run. Ray Data's own default (max_restarts=-1) triggers it too.
DROP = (re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store"),)


def apply_switches(verbose: bool) -> None:
    """Before a command loads or builds a model, and before Ray starts: the environment for this process
    and Ray's workers, and the loggers' levels."""
    if verbose:
        return
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    for name, level in LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # transformers and huggingface_hub read ENV once, when imported: a process that imported them already
    # (a program calling cli.main, a test session) gets their own switches. Neither is imported for this
    # (`capfilt --help` and `inspect` of a job without models stay fast).
    if "huggingface_hub" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
            hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
        if os.environ["TRANSFORMERS_VERBOSITY"] == "error":
            hf_logging.set_verbosity_error()


class StderrFilter:
    """File descriptor 2 through a pipe: lines matching DROP are dropped, all else is passed on at once
    (a partial line too, unless it may be the start of one of Ray's C++ log lines, `[YYYY-…`).

    Install it after Ray's own processes are started (they inherit the descriptors of the process that
    starts them) and close it before they stop; `release()` first wherever the process may exit at once."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.read = read
        self.thread = threading.Thread(target=self._pump, name="capfilt-stderr", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.read, 65536)
            except OSError:
                break
            if not chunk:
                break
            out, pending = split(pending + chunk)
            self._write(out)
        if pending:
            out, _ = split(pending + b"\n")
            self._write(out[:-1] if out.endswith(b"\n") else out)
        os.close(self.read)

    def _write(self, data: bytes) -> None:
        # Where stderr itself is gone (`2>&1 | head` ended), keep draining the pipe: a full pipe would
        # block every writer of this process.
        try:
            if data:
                os.write(self.saved, data)
        except OSError:
            pass

    def close(self) -> None:
        try:
            sys.stderr.flush()
        except ValueError:
            pass
        os.dup2(self.saved, 2)  # the pipe's last writer is gone: the pump reads to its end and stops
        self.thread.join(timeout=5)
        os.close(self.saved)


def split(data: bytes) -> tuple[bytes, bytes]:
    """(what to pass on now, what to hold until its line ends) of the bytes read so far."""
    lines = data.split(b"\n")
    tail = lines.pop()
    out = b"".join(line + b"\n" for line in lines if not any(p.search(line) for p in DROP))
    if tail.startswith(b"["):  # perhaps a C++ log line: wait for its end
        return out, tail
    return out + tail, b""


_ACTIVE: list[StderrFilter] = []


@contextmanager
def filtered(verbose: bool) -> Iterator[None]:
    """The filter (once) unless verbose, released when the block ends, however it ends."""
    if not verbose and not _ACTIVE:
        _ACTIVE.append(StderrFilter())
    try:
        yield
    finally:
        release()


def release() -> None:
    """Restores file descriptor 2 (before Ray stops, or before a message the process exits on)."""
    while _ACTIVE:
        _ACTIVE.pop().close()
