"""Runs `capfilt caption` on a local 3-node Ray cluster (head + 2 workers on this machine, Ray's own
`ray.cluster_utils.Cluster`), removes a worker node mid-run, and prints what happened as JSON.
Run by tests/test_faults.py in a subprocess so its cluster never meets the test session's Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def main(inputs: str, output: str, config: str, stall: float) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    cmd = [sys.executable, "-m", "pipeline", "caption", "--input", inputs, "--output", output, "--config", config,
           "--address", cluster.address, "--set", f"run.stall_timeout_s={stall}", "--set", "caption.num_cpus=0.5",
           "--set", "caption.concurrency=2", "--set", "caption.max_new_tokens=20", "--set", "caption.min_new_tokens=20",
           "--set", "caption.batch_size=4", "--set", "input.rows_per_block=4", "--set", "run.progress=log"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed = Path(output) / "_committed"
    removed_at = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if committed.exists() and len(list(committed.glob("*.json"))) >= 2:
            cluster.remove_node(workers[1])
            removed_at = time.monotonic()
            break
        time.sleep(0.05)
    try:
        out, err = proc.communicate(timeout=stall + 180)
        rc = proc.returncode
    except subprocess.TimeoutExpired:  # a hang: exactly what must never happen
        proc.kill()
        out, err = proc.communicate()
        rc = None
    ended = time.monotonic()
    print(json.dumps({"rc": rc, "removed": removed_at is not None,
                      "seconds_after_removal": None if removed_at is None else ended - removed_at,
                      "stdout": out[-2000:], "stderr": err[-4000:]}))
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
