"""Where weights come from: an HF id, a local directory, an s3:// directory, or `tiny:<name>`."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """`$CAPFILT_CACHE`, else ~/.cache/capfilt: tiny models and s3:// model directories land here."""
    return Path(os.environ.get("CAPFILT_CACHE") or Path.home() / ".cache" / "capfilt")


def resolve_model(model: str, storage_options: dict[str, Any] | None = None) -> str:
    """Returns what `from_pretrained` takes: an HF id or a local directory.

    s3:// directories are copied once per node into the cache (a temp dir renamed into place, so
    concurrent actors never see half a copy); `tiny:<name>` is built offline on first use.
    """
    if model.startswith("tiny:"):
        from pipeline.models.tiny import ensure_tiny

        return str(ensure_tiny(model.removeprefix("tiny:")))
    if "://" in model and not model.startswith("file://"):
        from pipeline.io.storage import get_fs

        dest = cache_dir() / "models" / hashlib.sha1(model.encode()).hexdigest()[:16]
        if not (dest / ".complete").exists():
            fs, path = get_fs(model, storage_options)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".partial-"))
            log.info("copying model %s to %s", model, dest)
            fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
            (tmp / ".complete").touch()
            try:
                tmp.rename(dest)
            except OSError:  # another actor on this node won the race
                shutil.rmtree(tmp, ignore_errors=True)
        return str(dest)
    return model.removeprefix("file://")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)
