"""Readers: one row per sample (key, source, image bytes, text, meta, status, error), streamed in blocks.

Each reader turns one shard into an iterator of pyarrow tables of at most `rows_per_block` rows and ends
with a `SHARD_END` row that carries the shard's row count, so the driver can commit the shard once
every row of it has come through.

Two kinds of error, two treatments. What is wrong with the data (a corrupt or truncated tar or Parquet,
a member too large, a missing image) is a row with a status, and the shard commits. What is wrong with
the infrastructure (an `OSError` from the filesystem: throttling past botocore's retries, a connection
reset, a timeout, expired credentials, a 5xx) is never a row: `read_shard` reads the shard again after a
backoff, skipping the samples it already yielded (a shard reads the same every time), and after
`input.read_retries` attempts ends the shard with a SHARD_END row that says it failed, so the driver
drops its rows and commits nothing of it; the rerun reads it again.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from pipeline.io.files import InfraError, infra, open_input
from pipeline.io.layout import InputLayoutError, ParquetColumns, is_bytes, json_text, parquet_columns, wds_text
from pipeline.io.shards import Shard, folder_samples
from pipeline.io.storage import get_fs
from pipeline.schema import (
    DUPLICATE_KEY,
    ERROR,
    IMAGE,
    KEY,
    MASK,
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

log = logging.getLogger(__name__)

# tarfile's stream reads in pieces of this size: its default (10 KiB) makes ~25 reads of a web JPEG, its
# buffer is copied on each, so 1 MiB is slower still; 64 KiB measured fastest (0.17 → 0.10 ms per sample).
TAR_BUFSIZE = 1 << 16

READ_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(IMAGE, pa.binary()),
        pa.field(TEXT, pa.string()),
        pa.field(META, pa.string()),
        pa.field(STATUS, pa.string()),
        pa.field(ERROR, pa.string()),
        pa.field(MASK, pa.binary()),  # a region mask (decode/regions.py), where the input has one
    ]
)


class _Blocks:
    """Collects rows and hands out tables of `size` rows; makes keys unique within the shard."""

    def __init__(self, source: str, cfg: InputConfig, skip: int = 0, keys: frozenset[str] | None = None):
        self.source, self.size, self.max_text = source, cfg.rows_per_block, cfg.max_text_chars
        self.keys = keys  # only these samples (a retry); the others are read past
        # Column by column: a table built from lists costs a fifth of one built from row dicts
        self.rows: dict[str, list[Any]] = {name: [] for name in READ_SCHEMA.names}
        self.count = 0
        self.skip = skip  # a re-read after a transient error: the first `skip` rows were yielded already
        self.seen: dict[str, int] = {}
        self.columns: dict[str, Any] | None = None  # what the reader read the samples from (the shard's marker)

    def add(
        self,
        key: str,
        image: bytes | None,
        text: str | None = None,
        meta: str | None = None,
        status: str = OK,
        error: str | None = None,
        mask: bytes | None = None,
    ) -> pa.Table | None:
        if key in self.seen:  # never two rows with one key: the repeat is kept, renamed, with a status
            self.seen[key] += 1
            key, status, error = f"{key}#dup{self.seen[key]}", DUPLICATE_KEY, f"key {key!r} seen before in this shard"
            image = None
        else:
            self.seen[key] = 0
        if self.keys is not None and key not in self.keys:
            return None
        if text is not None and not text.strip():
            text = None  # an empty alt-text is none (img2dataset writes an empty KEY.txt for a null caption)
        elif text is not None and len(text) > self.max_text:
            text = text[: self.max_text]
        self.count += 1
        if self.count <= self.skip:
            return None
        self._append({KEY: key, SOURCE: self.source, IMAGE: image, TEXT: text, META: meta, STATUS: status,
                      ERROR: error, MASK: mask if status == OK else None})
        return self.flush() if len(self.rows[KEY]) >= self.size else None

    def _append(self, row: dict[str, Any]) -> None:
        for name, values in self.rows.items():
            values.append(row[name])

    def flush(self) -> pa.Table | None:
        if not self.rows[KEY]:
            return None
        columns = {name: binary_column(values) if name == IMAGE else values for name, values in self.rows.items()}
        table = pa.Table.from_pydict(columns, schema=READ_SCHEMA)
        self.rows = {name: [] for name in READ_SCHEMA.names}
        return table

    def end(self, input_rows: int | None = None) -> pa.Table:
        """The last block: what is left plus the SHARD_END row carrying the row count (and the count the
        input says it holds, where it says: a Parquet footer's)."""
        meta: dict[str, Any] = {"rows": self.count}
        if input_rows is not None and self.keys is None:
            meta["input_rows"] = input_rows
        if self.columns is not None:
            meta["columns"] = self.columns
        self._append(_end_row(self.source, meta))
        table = self.flush()
        assert table is not None  # the end row at least
        return table


def binary_column(values: list[bytes | None]) -> pa.Array:
    """A binary column of these bytes, None for null: every value copied once, into one buffer that Arrow
    takes as it is. (pa.array copies them into a buffer it grows as it goes, fresh for every block: a
    block of 64 web JPEGs cost ~0.15 ms an image, mostly page faults, against ~0.06 for the whole block
    built this way; BENCHMARKS.md.)"""
    sizes = np.fromiter((len(v) if v is not None else 0 for v in values), dtype=np.int64, count=len(values))
    if sizes.sum() >= 2**31:  # past binary's 32-bit offsets: Arrow's own builder says so
        return pa.array(values, type=pa.binary())
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    valid = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
    nulls = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    data = b"".join(v for v in values if v is not None)
    return pa.Array.from_buffers(pa.binary(), len(values), [nulls, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=int((~valid).sum()))


def _end_row(source: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {KEY: f"{SHARD_END}:{source}", SOURCE: source, IMAGE: None, TEXT: None, META: json.dumps(meta),
            STATUS: SHARD_END, ERROR: None, MASK: None}


def _text(data: bytes) -> str:
    # Alt-text from the web is not always UTF-8: keep what we can rather than lose the row.
    return data.decode("utf-8", errors="replace")


def _split_name(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the basename."""
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(dirname, stem) if dirname else stem, ext.lower()


def read_webdataset(shard: Shard, cfg: InputConfig, options: dict[str, Any], blocks: _Blocks) -> Iterator[pa.Table]:
    """Streams a tar member by member (never extracted to disk); consecutive members share a key."""
    image_exts = set(cfg.image_extensions)
    fs, path = get_fs(shard.uri, options)
    text_member, text_field = wds_text(cfg)

    def emit(key: str, parts: dict[str, bytes | None]) -> pa.Table | None:
        ext = next((e for e in parts if e in image_exts), None)
        meta = _text(parts["json"]) if parts.get("json") is not None else None  # type: ignore[arg-type]
        if text_field:
            text = json_text(meta, text_field)
        else:
            data = parts.get(text_member) if text_member else None
            text = _text(data) if data is not None else None
        if ext is None and key in links:
            return blocks.add(key, None, text, meta, READ_ERROR, "the image member is a link: links are never followed")
        if ext is None:
            return blocks.add(key, None, text, meta, MISSING_IMAGE, "no image member for this key")
        if parts[ext] is None:
            return blocks.add(key, None, text, meta, TOO_LARGE, f"image member over input.max_image_bytes={cfg.max_image_bytes}")
        return blocks.add(key, parts[ext], text, meta, mask=parts.get(cfg.mask_member))

    key: str | None = None
    parts: dict[str, bytes | None] = {}
    links: set[str] = set()
    try:
        with open_input(fs, path) as f, tarfile.open(fileobj=f, mode="r|*", bufsize=TAR_BUFSIZE) as tar:
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
        if isinstance(e, InfraError):  # the infrastructure's: read_shard reads the shard again
            raise
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


def read_parquet(shard: Shard, cfg: InputConfig, options: dict[str, Any], blocks: _Blocks) -> Iterator[pa.Table]:
    """Streams a Parquet file by record batches: the image, alt-text and key columns (io/layout.py: named,
    or found from the schema); the other columns → meta. A sample the writer marked failed (img2dataset: a
    null image with `status` and `error_message`) keeps the writer's reason in `error`."""
    fs, path = get_fs(shard.uri, options)
    stem = posixpath.splitext(posixpath.basename(path))[0]
    row = 0
    input_rows: int | None = None
    try:
        with open_input(fs, path) as f:
            # No pre-buffering of whole column chunks, 1 MB reads: pyarrow then decodes one data page at a
            # time, so a read holds a few pages, whatever the row group's size (make bench: 25 MB vs 250 MB
            # row groups in small pages). The pages are the writer's: pyarrow's defaults put 1,024 rows in a
            # page (~100 MB of 100 KB images), which then bounds the read; img2dataset writes 100-row groups.
            pf = pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False)
            input_rows = pf.metadata.num_rows
            schema = pf.schema_arrow
            # A file whose columns do not fit the config fails whole, uncommitted (read_shard): the rerun
            # with the setting fixed reads it, where rows of it committed as errors would be skipped.
            columns = parquet_columns(schema, cfg, shard.uri)
            if cfg.text_column not in (None, "auto") and columns.text is None:
                raise InputLayoutError(f"input {shard.uri}: no alt-text column {cfg.text_column!r} (columns: "
                                       f"{', '.join(schema.names)}); set input.text_column")
            blocks.columns = columns.describe()
            for batch in pf.iter_batches(batch_size=cfg.rows_per_block):
                cols = batch.to_pydict()
                images = cols.pop(columns.image)
                masks = cols.pop(cfg.mask_column, None) if _bytes_column(schema, cfg.mask_column) else None
                texts = cols.pop(columns.text) if columns.text else None
                keys = cols.pop(columns.key) if columns.key else None
                for i, cell in enumerate(images):
                    key = str(keys[i]) if keys is not None and keys[i] is not None else f"{stem}/{row:09d}"
                    text = _as_text(texts[i]) if texts is not None else None
                    fields = {k: v[i] for k, v in cols.items()}
                    image, why = cell, None
                    if columns.image_field is not None:  # Hugging Face's Image: {bytes, path}
                        image = cell.get(columns.image_field) if cell is not None else None
                        if cell is not None and cell.get("path") is not None:
                            fields["path" if "path" not in fields else f"{columns.image}.path"] = cell["path"]
                            if image is None:  # `datasets` keeps an image it loaded from a file as its path
                                image, why = _external(cell["path"], options, cfg.max_image_bytes)
                    meta = json.dumps(fields, default=str) if fields else None
                    row += 1
                    if image is None:
                        t = blocks.add(key, None, text, meta, TOO_LARGE if why and "max_image_bytes" in why else MISSING_IMAGE,
                                       why or _why_missing(columns, fields))
                    elif len(image) > cfg.max_image_bytes:
                        t = blocks.add(key, None, text, meta, TOO_LARGE, f"over input.max_image_bytes={cfg.max_image_bytes}")
                    else:
                        t = blocks.add(key, image, text, meta, mask=masks[i] if masks is not None else None)
                    if t is not None:
                        yield t
    except (OSError, ValueError, pa.ArrowException) as e:
        if isinstance(e, InfraError | InputLayoutError):  # the infrastructure's, or the config's: not rows
            raise
        t = blocks.add(f"{stem}/{READ_ERROR}", None, None, None, READ_ERROR,
                       f"shard unreadable after {row} rows: {type(e).__name__}: {e}")
        if t is not None:
            yield t
    if (t := blocks.flush()) is not None:
        yield t
    yield blocks.end(input_rows=input_rows)


def _external(path: str, options: dict[str, Any], limit: int) -> tuple[bytes | None, str | None]:
    """The image file a Hugging Face Image cell names instead of holding its bytes (`datasets` writes a
    file-backed image that way): (bytes, None), or (None, why) where the path is relative (to a machine we do
    not know), gone, or too large."""
    if not (path.startswith("/") or "://" in path):
        return None, f"the image is a relative path {path!r}, not bytes: write the Parquet with the images embedded"
    try:
        fs, p = get_fs(path, options)
        size = fs.size(p)
        if size is not None and size > limit:
            return None, f"{path!r} is over input.max_image_bytes={limit}"
        return fs.cat_file(p), None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None, f"the image is a path, not bytes, and {path!r} cannot be read as a file"
    except (ImportError, ValueError, TypeError) as e:  # a protocol fsspec has no filesystem for, and the like
        return None, f"the image is a path, not bytes, and {path!r} cannot be read: {type(e).__name__}: {e}"
    except OSError as e:
        raise InfraError(f"{type(e).__name__}: {e}") from e


def _why_missing(columns: ParquetColumns, fields: dict[str, Any]) -> str:
    """Why a row has no image: the writer's own reason where it gave one (img2dataset: `status`
    failed_to_download / failed_to_resize and `error_message`, e.g. an HTTP 404)."""
    source_status, message = fields.get("status"), fields.get("error_message")
    if isinstance(message, str) and message:
        return f"{source_status}: {message}" if isinstance(source_status, str) and source_status else message
    return f"null {columns.image}{'.' + columns.image_field if columns.image_field else ''}"


def _bytes_column(schema: pa.Schema, name: str) -> bool:
    return bool(name) and name in schema.names and is_bytes(schema.field(name).type)


def _as_text(value: Any) -> str | None:
    """An alt-text cell of any type: a string as it is, bytes decoded, anything else as JSON (a list
    text column, a number): kept, never a crash."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return _text(value)
    return json.dumps(value, default=str)


def read_folder(shard: Shard, cfg: InputConfig, options: dict[str, Any], blocks: _Blocks) -> Iterator[pa.Table]:
    """A folder (or a part of one: see shards.py) of images with optional same-name `.txt`; keys are
    paths relative to the folder."""
    fs, root = get_fs(shard.root or shard.uri, options)
    samples = shard.files if shard.files is not None else infra(folder_samples, fs, root, cfg.image_extensions)
    for key, image, txt in samples:
        try:
            text = _text(fs.cat_file(txt)) if txt and cfg.text_column is not None else None
            if not image:
                t = blocks.add(key, None, text, None, MISSING_IMAGE, "no image file for this text")
            elif fs.size(image) > cfg.max_image_bytes:
                t = blocks.add(key, None, text, None, TOO_LARGE, f"file over input.max_image_bytes={cfg.max_image_bytes}")
            else:
                t = blocks.add(key, fs.cat_file(image), text)
        except FileNotFoundError as e:  # gone between listing and reading: the folder's data, not a fault
            t = blocks.add(key, None, None, None, READ_ERROR, f"{type(e).__name__}: {e}")
        except OSError as e:
            raise InfraError(f"{type(e).__name__}: {e}") from e
        if t is not None:
            yield t
    if (t := blocks.flush()) is not None:
        yield t
    yield blocks.end()


READERS = {"webdataset": read_webdataset, "parquet": read_parquet, "folder": read_folder}


def transient(e: BaseException) -> bool:
    """An error of the infrastructure, worth reading again: the filesystem's OSError (s3fs raises
    PermissionError for 403/expired credentials, OSError for 5xx and throttling past botocore's retries,
    TimeoutError, ConnectionError), as the readers mark it (InfraError)."""
    return isinstance(e, InfraError)


def read_shard(shard: Shard, cfg: InputConfig, options: dict[str, Any]) -> Iterator[pa.Table]:
    """The shard's blocks, read again on transient errors (up to `input.read_retries` more times, with
    exponential backoff from `input.retry_backoff_s`), never yielding a row twice; a shard that still
    fails ends with a SHARD_END row whose meta says `failed` (and nothing of it is committed)."""
    yielded = 0
    for attempt in range(cfg.read_retries + 1):
        blocks = _Blocks(shard.uri, cfg, skip=yielded, keys=shard.keys)
        try:
            for table in READERS[shard.format](shard, cfg, options, blocks):
                if shard.limit is not None and yielded + table.num_rows >= shard.limit:
                    # `capfilt estimate`: the first `limit` samples, then the shard's end at them
                    rows = table.filter(pc.not_equal(table[STATUS], SHARD_END)).slice(0, shard.limit - yielded)
                    yield pa.concat_tables([rows, pa.Table.from_pylist(
                        [_end_row(shard.uri, {"rows": yielded + rows.num_rows, "limited": True})], schema=READ_SCHEMA)])
                    return
                yielded += table.num_rows
                yield table
            return
        except InputLayoutError as e:  # the shard's columns do not fit the config: reading again won't help
            log.warning("shard %s not read: %s", shard.uri, e)
            yield pa.Table.from_pylist([_end_row(shard.uri, {"failed": str(e), "attempts": attempt + 1})],
                                       schema=READ_SCHEMA)
            return
        except InfraError as e:
            why = (str(e).splitlines() or [type(e).__name__])[0][:300]
            if attempt == cfg.read_retries:
                log.warning("shard %s failed after %d attempts: %s", shard.uri, attempt + 1, why)
                yield pa.Table.from_pylist([_end_row(shard.uri, {"failed": why, "attempts": attempt + 1})],
                                           schema=READ_SCHEMA)
                return
            delay = min(cfg.retry_backoff_s * 2**attempt, 60.0)
            log.warning("shard %s: %s; reading it again in %.1fs (attempt %d of %d)", shard.uri, why, delay,
                        attempt + 2, cfg.read_retries + 1)
            time.sleep(delay)


def read_shards(shards: list[Shard], cfg: InputConfig, options: dict[str, Any]) -> Iterator[pa.Table]:
    """Several shards' blocks, one shard after the other (a read task of small shards: see
    ray_adapter.pack); each ends with its own SHARD_END row, and each is read again on its own."""
    for shard in shards:
        yield from read_shard(shard, cfg, options)
