"""Turns input URIs (paths, globs, `{00000..00099}` braces, s3://) into a sorted list of shards."""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from pipeline.io.storage import get_fs, unstrip

FORMATS = ("webdataset", "parquet", "folder")
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})
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
    # A part of a folder: the folder (keys are paths relative to it) and its samples, as
    # (key, image path, text path); None for a whole folder, listed by its reader.
    root: str | None = None
    files: tuple[tuple[str, str | None, str | None], ...] | None = None
    keys: frozenset[str] | None = None  # `capfilt retry`: only these samples of the shard
    limit: int | None = None  # `capfilt estimate`: only the first samples of the shard


def folder_samples(fs: Any, root: str, image_extensions: tuple[str, ...],
                   paths: list[str] | None = None) -> list[tuple[str, str | None, str | None]]:
    """A folder's samples in key order: (key, image path, text path); keys are paths relative to the
    folder, without the extension; a text without an image (or the reverse) is still a sample. `paths`:
    the folder's files, where they are listed already."""
    root = root.rstrip("/")
    exts = {e.lower() for e in image_extensions}
    groups: dict[str, dict[str, str]] = {}
    for p in sorted(fs.find(root) if paths is None else paths):
        stem, dot, ext = p[len(root) + 1 :].rpartition(".")
        if dot and (ext.lower() in exts or ext.lower() == "txt"):
            groups.setdefault(stem, {})["txt" if ext.lower() == "txt" else "image"] = p
    return [(key, g.get("image"), g.get("txt")) for key, g in groups.items()]


def _folder_parts(fs: Any, path: str, uri: str, image_extensions: tuple[str, ...], per_shard: int) -> list[Shard]:
    """A folder as shards of `per_shard` samples, each committed on its own: `<folder>#part-00000`, ...
    Each part's ETag is a hash of its keys, so a folder that changed under a committed part is noticed."""
    found = fs.find(path, detail=True)
    samples = folder_samples(fs, path, image_extensions, list(found))
    out = []
    for k in range(0, max(len(samples), 1), per_shard):
        part = tuple(samples[k : k + per_shard])
        etag = hashlib.sha1("\0".join(key for key, _, _ in part).encode()).hexdigest()[:16]
        size = sum(found[f].get("size") or 0 for _, image, txt in part for f in (image, txt) if f)
        out.append(Shard(f"{uri.rstrip('/')}#part-{k // per_shard:05d}", "folder", size, etag, uri, part))
    return out


def _format_of(path: str, isdir: bool, fmt: str) -> str | None:
    if fmt != "auto":
        return fmt
    if isdir:
        return "folder"
    for suffix, f in _SUFFIX_FORMAT.items():
        if path.endswith(suffix):
            return f
    return None


def _sidecar(path: str, stems: set[str]) -> bool:
    """img2dataset writes its metadata (no images) as X.parquet beside each X.tar shard and X/ folder."""
    return path.endswith(".parquet") and path.removesuffix(".parquet") in stems


def _shard_stems(found: list[tuple[str, dict[str, Any]]]) -> set[str]:
    return {p.rstrip("/").removesuffix(".tar") for p, info in found if info.get("type") == "directory" or p.endswith(".tar")}


def _shard_files_of_folders(fs: Any, found: list[tuple[str, dict[str, Any]]], fmt: str) -> list[tuple[str, dict[str, Any]]]:
    """A folder that holds .tar or .parquet shards (a Hugging Face dataset's `data/`, img2dataset's output
    folder) stands for them, not for a folder of images; a folder of images stays one."""
    out: list[tuple[str, dict[str, Any]]] = []
    for p, info in found:
        if info.get("type") != "directory" or fmt == "folder":
            out.append((p, info))
            continue
        children = [(c["name"], c) for c in sorted(fs.ls(p, detail=True), key=lambda c: c["name"])]
        if any(name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS for name, c in children if c.get("type") != "directory"):
            out.append((p, info))  # images of its own: an image folder (a .tar or .parquet beside them is not read)
            continue
        stems = _shard_stems(children)
        shards = [(name, c) for name, c in children if c.get("type") != "directory" and not _sidecar(name, stems)
                  and _format_of(name, False, "auto") in ((fmt,) if fmt != "auto" else ("webdataset", "parquet"))]
        out.extend(shards or [(p, info)])
    return out


def _listed(fs: Any, path: str, listings: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """What the listing of `path`'s folder says of it (listed once per folder), None if it is not there."""
    parent = posixpath.dirname(path.rstrip("/"))
    if parent not in listings:
        try:
            listings[parent] = {e["name"].rstrip("/"): e for e in fs.ls(parent, detail=True)}
        except FileNotFoundError:
            listings[parent] = {}
    return listings[parent].get(path.rstrip("/"))


def list_shards(inputs: list[str], fmt: str = "auto", options: dict[str, Any] | None = None,
                image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"),
                files_per_shard: int = 0, firsts: list[Shard] | None = None) -> list[Shard]:
    """Lists every shard the inputs name (a folder as shards of `files_per_shard` samples; 0: whole);
    raises FileNotFoundError naming a pattern that matched nothing. `firsts`: gets the first shard of each
    input and of each format in it (what io/layout.check_inputs reads before Ray starts)."""
    shards: dict[str, Shard] = {}
    for raw in inputs:
        mine: dict[str, Shard] = {}
        patterns = expand_braces(raw)
        # A brace range names many objects of a few folders: each folder is listed once (S3: a request per
        # 1,000 objects), not each object asked for (two requests per shard: 80,000 for LAION-400M's 40,000).
        listings: dict[str, dict[str, dict[str, Any]]] = {}
        for pattern in patterns:
            fs, path = get_fs(pattern, options)
            if any(c in path for c in "*?["):
                found = sorted(fs.glob(path, detail=True).items())
            elif len(patterns) > 1:
                info = _listed(fs, path, listings)
                found = [(path, info)] if info is not None else []
            elif fs.exists(path):
                found = [(path, fs.info(path))]
            else:
                found = []
            if not found:
                raise FileNotFoundError(f"input {pattern!r} matched nothing")
            found = _shard_files_of_folders(fs, found, fmt)
            readable = 0
            stems = _shard_stems(found)
            for p, info in found:
                isdir = info.get("type") == "directory"
                f = _format_of(p, isdir, fmt)
                if f == "parquet" and fmt == "auto" and _sidecar(p, stems):
                    readable += 1
                    continue
                if f is None:
                    if len(found) > 1:
                        continue  # a glob also matched files we do not read (e.g. img2dataset's _stats.json)
                    raise ValueError(f"input {pattern!r}: cannot tell the format; set input.format")
                readable += 1
                if f == "folder" and not isdir:
                    raise ValueError(f"input {pattern!r}: input.format is 'folder' but this is a file")
                uri = unstrip(fs, p)
                if f == "folder" and files_per_shard:
                    mine.update((part.uri, part) for part in _folder_parts(fs, p, uri, image_extensions, files_per_shard))
                    continue
                etag = info.get("ETag") or info.get("etag")
                mine[uri] = Shard(uri=uri, format=f, size=info.get("size"), etag=str(etag).strip('"') if etag else None)
            if not readable:  # e.g. a glob that matches only .tar.gz: not one shard, and that is no success
                names = ", ".join(posixpath.basename(p.rstrip("/")) for p, _ in found[:3])
                raise ValueError(f"input {pattern!r} matched {len(found)} object(s) ({names}{', ...' if len(found) > 3 else ''}) "
                                 "but none that capfilt reads: .tar (uncompressed webdataset), .parquet, or a folder; "
                                 "set input.format if they are one of these")
        if firsts is not None:
            by_format: dict[str, Shard] = {}
            for shard in sorted(mine.values(), key=lambda s: s.uri):
                by_format.setdefault(shard.format, shard)
            firsts.extend(by_format.values())
        shards.update(mine)
    return sorted(shards.values(), key=lambda s: s.uri)
