"""Readers: one row per sample (key, source, image bytes, text, meta, status, error), streamed in blocks.

Each reader turns one shard into an iterator of pyarrow tables of at most `rows_per_block` rows and ends
with a `SHARD_END` row that carries the shard's row count, so the driver can commit the shard once
every row of it has come through. A sample that cannot be read becomes a row with a status.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from pipeline.io.shards import Shard
from pipeline.io.storage import get_fs
from pipeline.schema import (
    DUPLICATE_KEY,
    ERROR,
    IMAGE,
    KEY,
    META,
    MISSING_IMAGE,
    OK,
    READ_ERROR,
    SHARD_END,
    SOURCE,
    STATUS,
    TEXT,
    TOO_LARGE,
)

READ_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(IMAGE, pa.binary()),
        pa.field(TEXT, pa.string()),
        pa.field(META, pa.string()),
        pa.field(STATUS, pa.string()),
        pa.field(ERROR, pa.string()),
    ]
)


class _Blocks:
    """Collects rows and hands out tables of `size` rows; makes keys unique within the shard."""

    def __init__(self, source: str, cfg: InputConfig):
        self.source, self.size, self.max_text = source, cfg.rows_per_block, cfg.max_text_chars
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self.seen: dict[str, int] = {}

    def add(
        self,
        key: str,
        image: bytes | None,
        text: str | None = None,
        meta: str | None = None,
        status: str = OK,
        error: str | None = None,
    ) -> pa.Table | None:
        if key in self.seen:  # never two rows with one key: the repeat is kept, renamed, with a status
            self.seen[key] += 1
            key, status, error = f"{key}#dup{self.seen[key]}", DUPLICATE_KEY, f"key {key!r} seen before in this shard"
            image = None
        else:
            self.seen[key] = 0
        if text is not None and len(text) > self.max_text:
            text = text[: self.max_text]
        self.rows.append(
            {KEY: key, SOURCE: self.source, IMAGE: image, TEXT: text, META: meta, STATUS: status, ERROR: error}
        )
        self.count += 1
        return self.flush() if len(self.rows) >= self.size else None

    def flush(self) -> pa.Table | None:
        if not self.rows:
            return None
        table = pa.Table.from_pylist(self.rows, schema=READ_SCHEMA)
        self.rows = []
        return table

    def end(self) -> pa.Table:
        """The last block: what is left plus the SHARD_END row carrying the row count."""
        self.rows.append(
            {KEY: f"{SHARD_END}:{self.source}", SOURCE: self.source, IMAGE: None, TEXT: None,
             META: json.dumps({"rows": self.count}), STATUS: SHARD_END, ERROR: None}
        )
        table = pa.Table.from_pylist(self.rows, schema=READ_SCHEMA)
        self.rows = []
        return table


def _text(data: bytes) -> str:
    # Alt-text from the web is not always UTF-8: keep what we can rather than lose the row.
    return data.decode("utf-8", errors="replace")


def _split_name(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the basename."""
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(dirname, stem) if dirname else stem, ext.lower()


def read_webdataset(shard: Shard, cfg: InputConfig, options: dict[str, Any]) -> Iterator[pa.Table]:
    """Streams a tar member by member (never extracted to disk); consecutive members share a key."""
    blocks = _Blocks(shard.uri, cfg)
    image_exts = set(cfg.image_extensions)
    fs, path = get_fs(shard.uri, options)

    def emit(key: str, parts: dict[str, bytes | None]) -> pa.Table | None:
        ext = next((e for e in parts if e in image_exts), None)
        text = _text(parts["txt"]) if parts.get("txt") is not None else None  # type: ignore[arg-type]
        meta = _text(parts["json"]) if parts.get("json") is not None else None  # type: ignore[arg-type]
        if ext is None and key in links:
            return blocks.add(key, None, text, meta, READ_ERROR, "the image member is a link: links are never followed")
        if ext is None:
            return blocks.add(key, None, text, meta, MISSING_IMAGE, "no image member for this key")
        if parts[ext] is None:
            return blocks.add(key, None, text, meta, TOO_LARGE, f"image member over input.max_image_bytes={cfg.max_image_bytes}")
        return blocks.add(key, parts[ext], text, meta)

    key: str | None = None
    parts: dict[str, bytes | None] = {}
    links: set[str] = set()
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not (member.isfile() or member.issym() or member.islnk()):
                    continue  # directories, devices, fifos: not samples
                # The member name only ever becomes a key (data): nothing is written to disk, so
                # `../x` or `/etc/x` names are harmless here.
                k, ext = _split_name(member.name)
                if k != key:
                    if key is not None and (t := emit(key, parts)) is not None:
                        yield t
                    key, parts = k, {}
                if not member.isfile():  # a link: never followed, but the sample still gets its row
                    links.add(k)
                    continue
                if ext in parts:
                    continue
                limit = cfg.max_image_bytes if ext in image_exts else cfg.max_text_chars * 4 + 65536
                if member.size > limit and ext in image_exts:
                    parts[ext] = None  # too large: skipped in the stream, never read into memory
                    continue
                fobj = tar.extractfile(member)
                if fobj is not None:
                    parts[ext] = fobj.read(limit)
    except (tarfile.TarError, EOFError, OSError) as e:
        # The sample being read when the tar broke may be incomplete: it becomes the error row. A tar
        # that breaks between samples (or before the first) gets a row of its own.
        message = f"shard unreadable after {blocks.count} samples: {type(e).__name__}: {e}"
        t = blocks.add(key if key is not None else f"{posixpath.basename(path)}/{READ_ERROR}",
                       None, None, None, READ_ERROR, message)
        if t is not None:
            yield t
        key = None
    if key is not None and (t := emit(key, parts)) is not None:
        yield t
    yield blocks.end()


def read_parquet(shard: Shard, cfg: InputConfig, options: dict[str, Any]) -> Iterator[pa.Table]:
    """Streams a Parquet file by record batches: image bytes, optional text and key columns; the rest → meta."""
    blocks = _Blocks(shard.uri, cfg)
    fs, path = get_fs(shard.uri, options)
    stem = posixpath.splitext(posixpath.basename(path))[0]
    row = 0
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if cfg.image_column not in names:
                raise ValueError(f"no image column {cfg.image_column!r} (columns: {', '.join(names)}); "
                                 "set input.image_column")
            for batch in pf.iter_batches(batch_size=cfg.rows_per_block):
                cols = batch.to_pydict()
                images = cols.pop(cfg.image_column)
                texts = cols.pop(cfg.text_column, None)
                keys = cols.pop(cfg.key_column, None)
                for i, image in enumerate(images):
                    key = str(keys[i]) if keys is not None and keys[i] is not None else f"{stem}/{row:09d}"
                    text = texts[i] if texts is not None else None
                    if isinstance(text, bytes):
                        text = _text(text)
                    meta = json.dumps({k: v[i] for k, v in cols.items()}, default=str) if cols else None
                    row += 1
                    if image is None:
                        t = blocks.add(key, None, text, meta, MISSING_IMAGE, f"null {cfg.image_column!r}")
                    elif len(image) > cfg.max_image_bytes:
                        t = blocks.add(key, None, text, meta, TOO_LARGE, f"over input.max_image_bytes={cfg.max_image_bytes}")
                    else:
                        t = blocks.add(key, image, text, meta)
                    if t is not None:
                        yield t
    except (OSError, ValueError, pa.ArrowException) as e:
        t = blocks.add(f"{stem}/{READ_ERROR}", None, None, None, READ_ERROR,
                       f"shard unreadable after {row} rows: {type(e).__name__}: {e}")
        if t is not None:
            yield t
    if (t := blocks.flush()) is not None:
        yield t
    yield blocks.end()


def read_folder(shard: Shard, cfg: InputConfig, options: dict[str, Any]) -> Iterator[pa.Table]:
    """A folder of images with optional same-name `.txt`; keys are paths relative to the folder."""
    blocks = _Blocks(shard.uri, cfg)
    fs, root = get_fs(shard.uri, options)
    root = root.rstrip("/")
    image_exts = set(cfg.image_extensions)
    groups: dict[str, dict[str, str]] = {}
    for p in sorted(fs.find(root)):
        rel = p[len(root) + 1 :]
        stem, dot, ext = rel.rpartition(".")
        if dot and (ext.lower() in image_exts or ext.lower() == "txt"):
            groups.setdefault(stem, {})["txt" if ext.lower() == "txt" else "image"] = p
    for key, files in groups.items():
        try:
            text = _text(fs.cat_file(files["txt"])) if "txt" in files else None
            if "image" not in files:
                t = blocks.add(key, None, text, None, MISSING_IMAGE, "no image file for this text")
            elif fs.size(files["image"]) > cfg.max_image_bytes:
                t = blocks.add(key, None, text, None, TOO_LARGE, f"file over input.max_image_bytes={cfg.max_image_bytes}")
            else:
                t = blocks.add(key, fs.cat_file(files["image"]), text)
        except OSError as e:  # e.g. gone between listing and reading
            t = blocks.add(key, None, None, None, READ_ERROR, f"{type(e).__name__}: {e}")
        if t is not None:
            yield t
    if (t := blocks.flush()) is not None:
        yield t
    yield blocks.end()


READERS = {"webdataset": read_webdataset, "parquet": read_parquet, "folder": read_folder}


def read_shard(shard: Shard, cfg: InputConfig, options: dict[str, Any]) -> Iterator[pa.Table]:
    return READERS[shard.format](shard, cfg, options)
