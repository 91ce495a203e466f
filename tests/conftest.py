"""Shared fixtures: a model cache, a moto S3 server on 127.0.0.1, one local Ray for the session."""

from __future__ import annotations

import logging
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Offline always: any download attempt fails fast instead of hanging on a closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models are built once per session (or reused from `make`'s cache)."""
    if "CAPFILT_CACHE" not in os.environ:
        os.environ["CAPFILT_CACHE"] = str(tmp_path_factory.mktemp("capfilt-cache"))
    return Path(os.environ["CAPFILT_CACHE"])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto in server mode on 127.0.0.1 (what s3fs's own tests use); env points s3fs/boto at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3(s3_server: str) -> Iterator[object]:
    """An s3fs filesystem on a fresh moto state (reset between tests)."""
    import urllib.request

    import s3fs

    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/moto-api/reset", method="POST")).read()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def ray_local(s3_server: str, model_cache: Path) -> Iterator[None]:
    """One local Ray for the session, started after the S3 and cache env is set so workers inherit it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_blip(model_cache: Path) -> Path:
    from pipeline.models.tiny import ensure_tiny

    return ensure_tiny("blip")


@pytest.fixture(scope="session")
def photos() -> list:
    from pipeline.samples import photos

    return photos(256)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    import io

    from pipeline.samples import add_member

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            add_member(tar, name, data)
    return buf.getvalue()
