"""Shared fixtures: a model cache, a moto S3 server on 127.0.0.1, one local Ray for the session."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.hostile import POISON

# Offline always: any download attempt fails fast instead of hanging on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Fault injection (see pipeline/decode/image.py): images starting with this marker kill the decoder process.
os.environ["CAPFILT_FAILPOINT_DECODE_CRASH"] = POISON.decode()
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models are built once per session (or reused from `make`'s cache)."""
    if "CAPFILT_CACHE" not in os.environ:
        os.environ["CAPFILT_CACHE"] = str(tmp_path_factory.mktemp("capfilt-cache"))
    return Path(os.environ["CAPFILT_CACHE"])


class FlakyS3:
    """moto's WSGI app, answering every `fail_every`-th request with 503 SlowDown when set (moto has
    no fault injection of its own). Requests to moto's own API (reset) are never failed."""

    SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")

    EXPIRED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ExpiredToken</Code>'
               b"<Message>The provided token has expired.</Message></Error>")

    def __init__(self, app: object):
        self.app, self.fail_every, self.count, self.failed = app, 0, 0, 0
        self.expired = False  # while set: ranged GETs past an object's first byte answer 403 ExpiredToken
        self.outage_until = 0.0  # until this time.monotonic(): every request answers 503 SlowDown
        self.slow_every, self.slow_s, self.gets = 0, 0.0, 0  # every slow_every-th GET waits slow_s first
        self.lock = threading.Lock()

    def _past_first_block(self, environ: dict) -> bool:
        rng = environ.get("HTTP_RANGE", "")
        return environ["REQUEST_METHOD"] == "GET" and rng.startswith("bytes=") and not rng.startswith("bytes=0-")

    def __call__(self, environ: dict, start_response):  # type: ignore[no-untyped-def]
        with self.lock:
            self.count += 1
            fail = self.fail_every and self.count % self.fail_every == 0 and "moto-api" not in environ["PATH_INFO"]
            expired = self.expired and self._past_first_block(environ)
            fail = fail or (time.monotonic() < self.outage_until and "moto-api" not in environ["PATH_INFO"])
            self.failed += bool(fail or expired)
            slow = False
            if self.slow_every and environ["REQUEST_METHOD"] == "GET":
                self.gets += 1
                slow = self.gets % self.slow_every == 0
        if slow:
            time.sleep(self.slow_s)  # past the client's read timeout: it times out and retries
        if expired:
            start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(self.EXPIRED)))])
            return [self.EXPIRED]
        if fail:
            start_response("503 Slow Down", [("Content-Type", "application/xml"), ("Content-Length", str(len(self.SLOWDOWN)))])
            return [self.SLOWDOWN]
        return self.app(environ, start_response)  # type: ignore[operator]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[FlakyS3]:
    """moto in server mode on 127.0.0.1 (what s3fs's own tests use); env points s3fs/boto at it."""
    from tests.fixtures.moto import moto_on_loopback

    with moto_on_loopback(FlakyS3) as (flaky, endpoint):
        flaky.endpoint = endpoint
        yield flaky


@pytest.fixture()
def s3(s3_server: FlakyS3) -> Iterator[object]:
    """An s3fs filesystem on a fresh moto state (reset between tests)."""
    import urllib.request

    import s3fs

    s3_server.fail_every, s3_server.expired, s3_server.outage_until, s3_server.slow_every = 0, False, 0.0, 0
    endpoint = s3_server.endpoint  # type: ignore[attr-defined]
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    yield fs
    s3_server.fail_every, s3_server.expired, s3_server.outage_until, s3_server.slow_every = 0, False, 0.0, 0
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def ray_local(s3_server: FlakyS3, model_cache: Path) -> Iterator[None]:
    """One local Ray for the session, started after the S3 and cache env is set so workers inherit it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_blip(model_cache: Path) -> Path:
    from pipeline.models.random_weights import ensure_tiny

    return ensure_tiny("blip")


@pytest.fixture(scope="session")
def photos() -> list:
    from tests.fixtures.samples import photos

    return photos(256)


@pytest.fixture()
def ray_dir() -> Iterator[Path]:
    """A short temp dir for a subprocess's own local Ray (RAY_TMPDIR); its processes are swept after."""
    import shutil
    import tempfile

    from tests.fixtures.processes import kill_leftovers

    d = Path(tempfile.mkdtemp(prefix="cfray", dir="/tmp"))
    yield d
    kill_leftovers(str(d))
    shutil.rmtree(d, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason, on machines without it (CI has none)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
