"""The plan of a LAION-400M-sized run on S3 (moto on 127.0.0.1): 40,000 img2dataset shards, half of them
committed by an earlier run; how long `run.plan` takes (listing, the inputs' check, the output check, the
resume check against the markers) and how many requests it sends, with the markers' index and without it
(each marker read on its own, as before the index), for a brace range and a glob."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from typing import Any


class Counting:
    """moto's WSGI app, counting the requests it answers by method."""

    def __init__(self, app: Any):
        self.app, self.counts, self.lock = app, Counter(), threading.Lock()

    def __call__(self, environ: dict, start_response: Any) -> Any:
        with self.lock:
            self.counts[environ["REQUEST_METHOD"]] += 1
        return self.app(environ, start_response)


def bench_plan(n_shards: int) -> dict[str, Any]:
    import s3fs

    from jobs.caption import JOB
    from pipeline.config import load_config
    from pipeline.io.writer import COMMITTED, INDEX, INDEX_EVERY
    from pipeline.job import build_job
    from pipeline.runner.run import plan
    from tests.fixtures.moto import moto_on_loopback
    from tests.fixtures.paths import CONFIGS
    from tests.fixtures.samples import tar_bytes

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    with moto_on_loopback(Counting) as (app, _):
        from moto.s3.models import s3_backends

        # Filled through moto's backend, in this process: 60,000 PUTs over HTTP would take minutes
        backend = s3_backends["123456789012"]["aws"]
        backend.create_bucket("laion", "us-east-1")
        tar = tar_bytes({"000000000.jpg": b"\xff\xd8", "000000000.txt": b"a cat"})
        for i in range(n_shards):
            backend.put_object("laion", f"shards/{i:05d}.tar", tar)
        cfg = load_config(str(CONFIGS / "tiny.yaml"), ["run.progress=none"], defaults=JOB.defaults)
        job = build_job(JOB, cfg)
        digest = cfg.digest(job.sections)
        done = n_shards // 2
        markers = []
        for i in range(done):
            m = {"source": f"s3://laion/shards/{i:05d}.tar", "name": f"{i:05d}", "rows": 10000,
                 "counts": {"ok": 10000}, "config_digest": digest, "run_id": "20261206T000000Z-aaaaaa",
                 "size": len(tar), "etag": None}
            backend.put_object("laion", f"out/{COMMITTED}/{i:05d}.json", json.dumps(m).encode())
            markers.append(m)
        index_keys = []
        for k in range(0, done, INDEX_EVERY):
            key = f"out/{INDEX}/20261206T000000Z-aaaaaa-{k // INDEX_EVERY:05d}.json"
            backend.put_object("laion", key, json.dumps(markers[k : k + INDEX_EVERY]).encode())
            index_keys.append(key)
        rows: dict[str, Any] = {"shards": n_shards, "committed": done}
        brace, glob = f"s3://laion/shards/{{00000..{n_shards - 1:05d}}}.tar", "s3://laion/shards/*.tar"
        for label, inputs in [("brace", brace), ("glob", glob), ("glob_no_index", glob)]:
            if label.endswith("no_index"):  # every marker read on its own, as before the index
                for key in index_keys:
                    backend.delete_object("laion", key)
            s3fs.S3FileSystem.clear_instance_cache()
            app.counts.clear()
            t0 = time.perf_counter()
            p = plan(job, [inputs], "s3://laion/out", cfg)
            seconds = time.perf_counter() - t0
            assert len(p.shards) == n_shards and len(p.todo) == n_shards - done
            rows[label] = {"seconds": round(seconds, 2), "requests": sum(app.counts.values()), "by_method": dict(app.counts)}
        return rows
