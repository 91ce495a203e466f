"""Turns input URIs (paths, globs, `{00000..00099}` braces, s3://) into a sorted list of shards."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

from pipeline.io.storage import get_fs, unstrip

FORMATS = ("webdataset", "parquet", "folder")
_SUFFIX_FORMAT = {".tar": "webdataset", ".parquet": "parquet"}
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expands `{a,b}` and `{000..099}` (zero padding kept), as bash and webdataset do.

    Hand-written because fsspec's glob has no brace syntax and this is the one piece of `braceexpand`
    we need (img2dataset's shard names are `{00000..NNNNN}.tar`).
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[: m.start()], m.group(1), pattern[m.end() :]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.startswith("0") and len(a) > 1 else 0
        lo, hi = int(a), int(b)
        step = 1 if hi >= lo else -1
        items = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    else:
        items = body.split(",")
    return [s for item in items for s in expand_braces(head + item + tail)]


@dataclass(frozen=True)
class Shard:
    uri: str  # full URI (s3://bucket/x.tar or a local path)
    format: str  # webdataset | parquet | folder
    size: int | None = None  # bytes, when known
    etag: str | None = None  # the object's ETag (S3), when known: a marker records it with the size


def _format_of(path: str, isdir: bool, fmt: str) -> str | None:
    if fmt != "auto":
        return fmt
    if isdir:
        return "folder"
    for suffix, f in _SUFFIX_FORMAT.items():
        if path.endswith(suffix):
            return f
    return None


def list_shards(inputs: list[str], fmt: str = "auto", options: dict[str, Any] | None = None) -> list[Shard]:
    """Lists every shard the inputs name; raises FileNotFoundError naming a pattern that matched nothing."""
    shards: dict[str, Shard] = {}
    for raw in inputs:
        for pattern in expand_braces(raw):
            fs, path = get_fs(pattern, options)
            if any(c in path for c in "*?["):
                found = sorted(fs.glob(path, detail=True).items())
            elif fs.exists(path):
                found = [(path, fs.info(path))]
            else:
                found = []
            if not found:
                raise FileNotFoundError(f"input {pattern!r} matched nothing")
            readable = 0
            for p, info in found:
                isdir = info.get("type") == "directory"
                f = _format_of(p, isdir, fmt)
                if f is None:
                    if len(found) > 1:
                        continue  # a glob also matched files we do not read (e.g. img2dataset's _stats.json)
                    raise ValueError(f"input {pattern!r}: cannot tell the format; set input.format")
                readable += 1
                if f == "folder" and not isdir:
                    raise ValueError(f"input {pattern!r}: input.format is 'folder' but this is a file")
                uri = unstrip(fs, p)
                etag = info.get("ETag") or info.get("etag")
                shards[uri] = Shard(uri=uri, format=f, size=info.get("size"), etag=str(etag).strip('"') if etag else None)
            if not readable:  # e.g. a glob that matches only .tar.gz: not one shard, and that is no success
                names = ", ".join(posixpath.basename(p.rstrip("/")) for p, _ in found[:3])
                raise ValueError(f"input {pattern!r} matched {len(found)} object(s) ({names}{', ...' if len(found) > 3 else ''}) "
                                 "but none that capfilt reads: .tar (uncompressed webdataset), .parquet, or a folder; "
                                 "set input.format if they are one of these")
    return sorted(shards.values(), key=lambda s: s.uri)
