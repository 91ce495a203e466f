"""What the benchmarks measure with: rates, side-by-side timing, GPU utilisation (NVML), peak memory,
the machine."""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.fixtures.memory import PeakRss, _Sampler

__all__ = ["GpuSampler", "PeakRss", "each_way", "environment", "rate"]


def rate(fn: Callable[[], int], min_seconds: float = 0.0) -> tuple[float, float]:
    """Runs fn (which returns how many images it did) until min_seconds; → (img/s, seconds)."""
    start, n = time.perf_counter(), 0
    while True:
        n += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed, elapsed

def each_way(run: Callable[[Any, bool], object], inputs: list[Any], size: Callable[[Any], int],
             seconds: float) -> dict[str, float]:
    """transformers' way (`run(x, False)`), then capfilt's (`run(x, True)`), each for `seconds` over
    `inputs` in turn → {"stock", "capfilt", "ratio"}: items (of `size(x)`) per second."""

    def timed(ours: bool) -> float:
        turn = itertools.cycle(inputs)

        def one() -> int:
            x = next(turn)
            run(x, ours)
            return size(x)

        return rate(one, seconds)[0]

    stock, ours = timed(False), timed(True)
    return {"stock": stock, "capfilt": ours, "ratio": ours / stock}

class GpuSampler(_Sampler):
    """GPU utilisation (%) sampled with NVML every 100 ms; empty where NVML is missing."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[int] = []

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML bindings: nvidia-smi reads the same counter, if it is there
            self._run_smi()
            return
        while not self._stop.wait(0.1):
            self.samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def _run_smi(self) -> None:
        import shutil

        if shutil.which("nvidia-smi") is None:
            return
        cmd = ["nvidia-smi", "-i", "0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if self._stop.is_set():
                    proc.kill()
                    break
                if line.strip().isdigit():
                    self.samples.append(int(line))

    def busy(self) -> float | None:
        """Mean utilisation over the middle 80 % of the samples (steady state)."""
        s = self.samples[len(self.samples) // 10 : len(self.samples) - len(self.samples) // 10] or self.samples
        return float(np.mean(s)) if s else None

def environment(device: str) -> dict[str, Any]:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import importlib.util

    env = {"date": time.strftime("%Y-%m-%d"), "commit": commit or None, "python": platform.python_version(),
           "torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.machine(), "device": device,
           # what the fast path and the data depend on, where a GPU box may lack it
           "has": {m: importlib.util.find_spec(m) is not None for m in ("simplejpeg", "accelerate", "pynvml", "skimage", "ray")}}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env
