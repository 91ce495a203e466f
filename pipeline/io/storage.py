"""fsspec filesystems for local paths and s3:// (s3fs), with the config's storage options."""

from __future__ import annotations

import logging
from typing import Any

import fsspec
from fsspec.core import url_to_fs

# botocore/s3fs log request details (headers included) at DEBUG: pin them so credentials never
# reach a log, whatever level the user's root logger is at.
for _name in ("botocore", "boto3", "s3fs", "aiobotocore", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)


# Throttling (503 SlowDown), timeouts and connection resets: botocore retries them with backoff;
# "adaptive" also slows the client down when S3 says so. Ten attempts ride out a bad minute.
S3_RETRIES = {"max_attempts": 10, "mode": "adaptive"}


def get_fs(uri: str, options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Returns (filesystem, path without protocol) for a URI; s3fs honours AWS_ENDPOINT_URL itself."""
    opts = dict(options or {}) if _is_remote(uri) else {}
    if uri.startswith(("s3://", "s3a://")):
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("retries", S3_RETRIES)
        opts["config_kwargs"] = config
    return url_to_fs(uri, **opts)


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Turns a path a filesystem returned back into a full URI (s3://bucket/key or a local path)."""
    return fs.unstrip_protocol(path) if _protocol(fs) != "file" else path


def protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    """Every name a filesystem answers to (`("s3", "s3a")`, `("file", "local")`)."""
    p = fs.protocol
    return tuple(p) if isinstance(p, (tuple, list)) else (p,)


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    return protocols(fs)[0]
