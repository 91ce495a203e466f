"""Per-shard commits: a shard's rows are written as one Parquet file once all of them have arrived.

The readers end every shard with a SHARD_END row holding its row count; the driver buffers rows by
shard and commits a shard when the count is reached: data file first (atomically: a temp name then a
rename locally, one PUT on S3), then a marker under `_committed/`. Output names come from the shard
name, so a retry or rerun rewrites the same object rather than adding a second copy.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io.shards import Shard
from pipeline.io.storage import get_fs, join, protocols
from pipeline.review.sketch import SKETCHED, table_sketches, with_sketches
from pipeline.schema import CAPTION_FLAGS, KEEP, KEY, META, READ_ERROR, RUN_ID, RUN_ID_TYPE, SHARD_END, SOURCE, STATUS, TEXT_SCORE

log = logging.getLogger(__name__)
COMMITTED = "_committed"
INDEX = "_index"  # OUT/_index/<run id>-<k>.json: the markers a run committed, a part per INDEX_EVERY
INDEX_EVERY = 1000
STAGING = "_staging"  # parts of shards larger than output.rows_per_part, until their commit (`_`: readers skip it)


def shard_ids(shards: list[Shard], taken: dict[str, str] | None = None) -> dict[str, str]:
    """Shard URI → output name: the shard's stem, plus a short hash of its full URI where the stem is not
    unique — among these shards, or against `taken` (name → URI of the markers already in the output), so
    that `x/00001.tar` and, in a later run into the same output, `y/00001.tar` never write one file."""
    def stem(uri: str) -> str:
        base = posixpath.basename(uri.rstrip("/")).replace("#", "-")  # a folder's parts: `imgs#part-00001`
        return base.split(".")[0] or "shard"

    taken = taken or {}
    counts = Counter(stem(s.uri) for s in shards)
    out = {}
    for s in shards:
        name = stem(s.uri)
        if counts[name] > 1 or taken.get(name, s.uri) != s.uri:
            name = f"{name}-{hashlib.sha1(s.uri.encode()).hexdigest()[:8]}"
        out[s.uri] = name
    return out


class OutputError(ValueError):
    """The output location does not exist or cannot be written: the message names it."""


def check_writable(output: str, options: dict[str, Any] | None = None) -> None:
    """Writes and removes a small probe object under `output`, before any work: a missing bucket, a
    path under a file or a location without write access fails now, naming the location, not after
    Ray has started and the models have loaded."""
    probe = join(output, f".capfilt-probe-{uuid.uuid4().hex[:8]}")
    try:
        write_atomic(probe, b"", options)
        fs, path = get_fs(probe, options)
        fs.rm(path)
    except (OSError, ValueError) as e:  # s3fs raises FileNotFoundError/PermissionError (OSError) or ValueError
        raise OutputError(f"output {output!r} cannot be written: {_why(output, e)}") from None


def _why(output: str, e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if output.startswith(("s3://", "s3a://")):
        bucket = output.split("://", 1)[1].split("/", 1)[0]
        if "NoSuchBucket" in text or "bucket does not exist" in text.lower() or isinstance(e, FileNotFoundError):
            return f"the bucket {bucket!r} does not exist"
        if isinstance(e, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
            return f"access to the bucket {bucket!r} is denied ({text[:200]})"
    return f"{type(e).__name__}: {text[:300]}"


def write_atomic(uri: str, data: bytes | Callable[[Any], None], options: dict[str, Any] | None = None) -> None:
    """Never leaves a partial object at `uri`: local files are renamed into place; an S3 object appears
    whole when its PUT (or multipart upload) completes. `data`: bytes, or a function that writes to a file."""
    fs, path = get_fs(uri, options)
    names = protocols(fs)

    def put(target: str) -> None:
        if isinstance(data, bytes):
            fs.pipe_file(target, data)
            return
        # S3 multipart parts must be ≥ 5 MiB, whatever block size the user set for reads (s3fs uses one for both)
        kw = {"block_size": max(int(getattr(fs, "blocksize", 0) or 0), 5 * 2**20)} if "s3" in names else {}
        f = fs.open(target, "wb", **kw)
        try:
            data(f)
        except BaseException:
            # Not `with`: fsspec's files close on an exception too, and an S3 file's close completes its
            # upload with what was written. discard() aborts it (s3fs: the multipart upload); nothing appears.
            if hasattr(f, "discard"):
                f.discard()
                f.closed = True  # discarded: its __del__ must not close (upload) it after all
            else:
                f.close()
            raise
        f.close()

    if "file" in names:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        # A leading dot: readers of the folder (pyarrow, pandas, duckdb/polars globs) skip it.
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            put(tmp)
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
    else:
        put(path)


def create_once(uri: str, data: bytes, options: dict[str, Any] | None = None) -> bool:
    """Writes `uri` only where nothing is: True if this call created it, False if an object was there.
    Locally a temp file is hard-linked into place (the link fails if the name exists); on S3 a PUT with
    `If-None-Match: *` (s3fs's mode="create"). A store that refuses conditional writes gets a plain PUT
    (with a warning): the check before the data was written still stands."""
    fs, path = get_fs(uri, options)
    names = protocols(fs)
    if "file" in names:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        fs.pipe_file(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: check, then rename (the check before the data stands)
            if fs.exists(path):
                return False
            fs.mv(tmp, path)
            return True
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
        return True
    if "s3" in names:
        try:
            fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:
            return False
        except OSError as e:  # e.g. 501 NotImplemented from a store without conditional writes
            log.warning("conditional write refused by the store (%s): the marker is written plainly", e)
    fs.pipe_file(path, data)
    return True


@dataclass
class _Pending:
    tables: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    expected: int | None = None
    input_rows: int | None = None  # what the input says it holds (a Parquet footer), where it says
    columns: dict[str, Any] | None = None  # the columns (members) the reader read it by (io/layout.py)
    parts: int = 0  # parts spilled to OUT/_staging/<name>/ (a shard larger than output.rows_per_part)
    buffered: int = 0  # rows held here, not spilled
    counts: Counter[str] = field(default_factory=Counter)  # statuses of the spilled rows
    flags: Counter[str] = field(default_factory=Counter)  # caption flags of the spilled rows


class ShardCommitter:
    """Buffers rows by shard and writes each complete shard to `OUT/<table>/<shard id>.parquet` for each
    of the job's tables (captions/, embeddings/), then the shard's marker."""

    def __init__(self, output: str, tables: dict[str, pa.Schema], ids: dict[str, str],
                 options: dict[str, Any], digest: str, compression: str = "zstd", shards: list[Shard] | None = None,
                 merge: bool = False, rows_per_part: int = 0, run_id: str | None = None,
                 calibration: Any = None):
        self.output, self.ids, self.run_id = output, ids, run_id
        # every table gains the run's id (provenance), written by this committer, not by the stages
        self.tables = {name: schema.append(pa.field(RUN_ID, RUN_ID_TYPE)) if run_id and RUN_ID not in schema.names
                       else schema for name, schema in tables.items()}
        # The driver holds at most this many rows of a shard: the rest waits as parts in OUT/_staging/,
        # so its memory does not grow with shard size (0: whole shards in memory).
        self.rows_per_part = 0 if merge else rows_per_part
        # `capfilt retry`: a shard's new rows replace the rows of the same keys in its committed files
        self.merge = merge
        self.markers: dict[str, dict[str, Any]] = {}  # the markers this run wrote: shard URI → marker
        self.inputs = {s.uri: s for s in shards or []}  # what a marker records of its input
        self.options, self.digest, self.compression = options, digest, compression
        self.pending: dict[str, _Pending] = defaultdict(_Pending)
        self.counts: Counter[str] = Counter()
        self.flags: Counter[str] = Counter()  # caption flags of the candidates this run committed
        self.committed: list[str] = []
        self.failed: dict[str, str] = {}  # shard URI → why (transient errors past the read retries)
        # A hook that holds the first complete shards back until it has decided from them, then decides
        # every table with a `keep` column at its commit (pipeline/review/calibration.py; None: write as is).
        self.calibration = calibration
        self.held: list[str] = []
        self.unindexed: list[dict[str, Any]] = []  # markers committed since the last part of this run's index
        self.index_parts = 0

    def add(self, batch: pa.Table) -> int:
        """Takes a block from the pipeline; returns how many samples (not shard-end rows) it held."""
        is_end = pc.equal(batch[STATUS], SHARD_END)
        ends = batch.filter(is_end)
        rows = batch.filter(pc.invert(is_end))
        # Shard ends first: a shard that arrives whole in this block is then written as it stands, a
        # row group at a time, not spilled to a part first.
        for source, meta in zip(ends[SOURCE].to_pylist(), ends[META].to_pylist(), strict=True):
            end = json.loads(meta)
            if "failed" in end:  # infrastructure errors past the read retries: nothing of it is committed
                dropped = self.pending.pop(source, None)
                if dropped is not None and dropped.parts:
                    self._unstage(self.ids[source])
                self.failed[source] = end["failed"]
                continue
            self.pending[source].expected = end["rows"]
            self.pending[source].input_rows = end.get("input_rows")
            self.pending[source].columns = end.get("columns")
        if rows.num_rows:
            for source in pc.unique(rows[SOURCE]).to_pylist():
                if source in self.failed:
                    continue
                part = rows.filter(pc.equal(rows[SOURCE], source))
                p = self.pending[source]
                p.tables.append(part)
                p.rows += part.num_rows
                p.buffered += part.num_rows
                if self.rows_per_part and p.buffered >= self.rows_per_part and not self._complete(p):
                    self._spill(source)
        for source in {*ends[SOURCE].to_pylist(), *(pc.unique(rows[SOURCE]).to_pylist() if rows.num_rows else [])}:
            if source in self.pending:
                self._maybe_commit(source)
        return rows.num_rows

    @staticmethod
    def _complete(p: _Pending) -> bool:
        return p.expected is not None and p.rows >= p.expected

    def _staged(self, name: str, table_name: str, k: int) -> str:
        return join(self.output, STAGING, name, f"{table_name}.{k:05d}.parquet")

    def _spill(self, source: str) -> None:
        """The shard's buffered rows → a part in OUT/_staging/<name>/ (one file per table)."""
        p, name = self.pending[source], self.ids[source]
        if p.parts == 0:
            self._unstage(name)  # what a run cut short left there
        rows = pa.concat_tables(p.tables, promote_options="permissive")
        for table_name, schema in self.tables.items():
            self._write_sorted(self._staged(name, table_name, p.parts), rows, schema, final=False)
        p.counts.update(rows[STATUS].to_pylist())
        p.flags.update(flag_counts(rows))
        p.parts, p.tables, p.buffered = p.parts + 1, [], 0

    def _unstage(self, name: str) -> None:
        fs, path = get_fs(join(self.output, STAGING, name), self.options)
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def _write_parts(self, uri: str, name: str, table_name: str, schema: pa.Schema, parts: int) -> None:
        """One file from a shard's staged parts, one row group per part: never more than a part in memory."""
        def part(k: int, columns: list[str] | None = None) -> pa.Table:
            pfs, ppath = get_fs(self._staged(name, table_name, k), self.options)
            with pfs.open(ppath, "rb") as pf:
                return pq.read_table(pf, columns=columns)

        scores = [c for c in SKETCHED if c in schema.names]  # the sketches need every score: read those first
        file_schema = self._file_schema(schema, pa.concat_tables([part(k, scores) for k in range(parts)])
                                        if scores else None)

        def write(f: Any) -> None:
            with pq.ParquetWriter(f, file_schema, compression=self.compression) as writer:
                for k in range(parts):
                    writer.write_table(self._decided(part(k)).cast(schema))

        write_atomic(uri, write, self.options)

    def _stamp(self, rows: pa.Table) -> pa.Table:
        """The run id column (dictionary-encoded: a few bytes per file), where the rows lack one."""
        if not self.run_id or RUN_ID in rows.column_names:
            return rows
        ids = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows.num_rows, dtype=np.int32)), pa.array([self.run_id]))
        return rows.append_column(RUN_ID, ids)

    def _file_schema(self, schema: pa.Schema, sketched: pa.Table | None) -> pa.Schema:
        """The schema a committed file is written with: its metadata holds the run id and the sketches of
        its score columns (pipeline.review.sketch), so `inspect` finds thresholds from footers alone."""
        scores = [c for c in SKETCHED if c in schema.names]  # this table's own score columns
        sketches = table_sketches(sketched.select(scores)) if sketched is not None and scores else {}
        return with_sketches(schema, sketches, self.run_id)

    def _write_sorted(self, uri: str, rows: pa.Table | None, schema: pa.Schema, final: bool = True) -> None:
        """The shard's rows in key order, straight into the file, a row group of at most rows_per_part rows
        at a time: a shard that arrived whole (Ray Data makes a block of up to 128 MiB, a whole shard when
        rows are small) costs one row group's copies, not several copies of the shard."""
        if rows is not None:
            rows = self._stamp(rows)
        if final:
            schema = self._file_schema(schema, rows)
            if rows is not None and KEEP in schema.names:
                rows = self._decided(rows)

        def write(f: Any) -> None:
            with pq.ParquetWriter(f, schema, compression=self.compression) as writer:
                if rows is None or not rows.num_rows:
                    writer.write_table(schema.empty_table())
                    return
                order = pc.sort_indices(rows[KEY])
                step = self.rows_per_part or rows.num_rows
                for start in range(0, rows.num_rows, step):
                    writer.write_table(rows.take(order.slice(start, step)).select(schema.names).cast(schema))

        write_atomic(uri, write, self.options)

    def _maybe_commit(self, source: str) -> None:
        p = self.pending[source]
        if p.expected is None or p.rows < p.expected:
            return
        if p.rows > p.expected:  # a retried read task delivered some rows twice
            raise RuntimeError(f"shard {source}: {p.rows} rows arrived for {p.expected} read")
        if self.calibration is not None and not self.calibration.ready:
            if source not in self.held:
                self.held.append(source)
                self.calibration.offer(source, self._column(source, TEXT_SCORE))
            if len(self.held) >= self.calibration.needed:
                self.release()
            return
        name = self.ids[source]
        if not self.merge and self._committed_meanwhile(source, name):
            del self.pending[source]
            if p.parts:
                self._unstage(name)
            return
        if p.parts and p.tables:
            self._spill(source)  # the last part
        rows = pa.concat_tables(p.tables, promote_options="permissive") if p.tables else None
        counts: Counter[str] = p.counts + (Counter(rows[STATUS].to_pylist()) if rows is not None else Counter())
        shard_counts = counts  # the marker's: every row of the shard (with a retry's merged in)
        flags = p.flags + (flag_counts(rows) if rows is not None else Counter())
        for table_name, schema in self.tables.items():
            uri = join(self.output, table_name, f"{name}.parquet")
            if p.parts:
                self._write_parts(uri, name, table_name, schema, p.parts)
                continue
            if self.merge:
                table = (self._stamp(rows).select(schema.names).cast(schema).sort_by(KEY) if rows is not None
                         else schema.empty_table())
                table = self._decided(self._merged(table_name, name, table))
                table = table.replace_schema_metadata(self._file_schema(table.schema, table).metadata)
                if STATUS in table.column_names:
                    shard_counts = Counter(table[STATUS].to_pylist())
                if CAPTION_FLAGS in table.column_names:
                    flags = flag_counts(table)
                buf = io.BytesIO()
                pq.write_table(table, buf, compression=self.compression)
                write_atomic(uri, buf.getvalue(), self.options)
            else:
                self._write_sorted(uri, rows, schema)
        if p.input_rows is not None and not counts.get(READ_ERROR) and p.rows != p.input_rows:
            raise RuntimeError(f"shard {source}: {p.rows} rows for the {p.input_rows} its footer lists")
        has_flags = any(CAPTION_FLAGS in schema.names for schema in self.tables.values())
        if self._mark(source, name, shard_counts, p.input_rows, retried=p.rows if self.merge else None,
                      flags=flags if has_flags else None, columns=p.columns):
            self.counts.update(counts)
            self.flags.update(flags)
        else:  # another driver's marker won the race (this run wrote the same rows to the same file)
            self._committed_meanwhile(source, name)
        if p.parts:
            self._unstage(name)
        del self.pending[source]

    def release(self) -> None:
        """Decides from the shards held so far (fewer than asked for at the end of a run), commits them."""
        if self.calibration is None or not self.held:
            return
        if not self.calibration.ready:
            self.calibration.calibrate()
        held, self.held = self.held, []
        for source in held:
            self._maybe_commit(source)

    def _column(self, source: str, column: str) -> pa.Table:
        """One column of a complete shard's rows: those held here and those in its staged parts."""
        p, name = self.pending[source], self.ids[source]
        table_name = next(t for t, schema in self.tables.items() if column in schema.names)
        parts = []
        for k in range(p.parts):
            fs, path = get_fs(self._staged(name, table_name, k), self.options)
            with fs.open(path, "rb") as f:
                parts.append(pq.read_table(f, columns=[column]))
        parts += [t.select([column]) for t in p.tables]
        return pa.concat_tables(parts, promote_options="permissive")

    def _decided(self, rows: pa.Table) -> pa.Table:
        if self.calibration is not None and self.calibration.ready and KEEP in rows.column_names:
            return self.calibration.decide(rows)  # type: ignore[no-any-return]
        return rows

    def _committed_meanwhile(self, source: str, name: str) -> bool:
        """Whether another driver on this output committed the shard since this run planned: with this
        config, its files are this shard's rows already (kept as they are); with another, this run stops
        rather than mix the two."""
        fs, path = get_fs(join(self.output, COMMITTED, f"{name}.json"), self.options)
        try:
            marker = json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return False
        if marker.get("source") != source or marker.get("config_digest") != self.digest:
            raise RuntimeError(f"shard {source}: {marker.get('source')} was committed to {self.output!r} as {name!r} "
                               f"by another run (config digest {marker.get('config_digest')}) while this one ran; "
                               f"its file may hold this run's rows: rerun that run to rewrite it, and use a new --output")
        log.info("shard %s was committed meanwhile by another run with this config: kept as it is", source)
        self.counts.update(marker.get("counts", {}))
        self.markers[source] = marker
        self.committed.append(source)
        return True

    def _merged(self, table_name: str, name: str, new: pa.Table) -> pa.Table:
        """The shard's committed rows, with those of the new rows' keys replaced by the new ones."""
        fs, path = get_fs(join(self.output, table_name, f"{name}.parquet"), self.options)
        with fs.open(path, "rb") as f:
            old = pq.read_table(f)
        if RUN_ID in new.column_names and RUN_ID not in old.column_names:  # written before run ids
            old = old.append_column(RUN_ID, pa.nulls(old.num_rows, RUN_ID_TYPE))
        old = old.cast(new.schema)
        keep = pc.invert(pc.is_in(old[KEY], value_set=new[KEY]))
        return pa.concat_tables([old.filter(keep), new]).sort_by(KEY)

    def _mark(self, source: str, name: str, counts: Counter[str], input_rows: int | None = None,
              retried: int | None = None, flags: Counter[str] | None = None,
              columns: dict[str, Any] | None = None) -> bool:
        """Writes the shard's marker: write-once, so that of two drivers on one output only one commits a
        shard (a retry rewrites its own). False: another driver's marker was there."""
        marker: dict[str, Any] = {"source": source, "name": name, "rows": sum(counts.values()), "counts": dict(counts),
                                  "config_digest": self.digest}
        if self.run_id:
            marker["run_id"] = self.run_id
        if flags is not None:  # candidates with each caption flag (models/flags.py)
            marker["caption_flags"] = dict(sorted(flags.items()))
        if input_rows is not None:
            marker["input_rows"] = input_rows
        if retried is not None:
            marker["retried_rows"] = retried
        if columns is not None:
            marker["columns"] = columns
        shard = self.inputs.get(source)
        if shard is not None:
            marker.update(size=shard.size, etag=shard.etag)
        uri, data = join(self.output, COMMITTED, f"{name}.json"), json.dumps(marker).encode()
        if retried is not None:
            write_atomic(uri, data, self.options)
        elif not create_once(uri, data, self.options):
            return False
        self.markers[source] = marker
        self.committed.append(source)
        self.unindexed.append(marker)
        if len(self.unindexed) >= INDEX_EVERY:
            self.write_index()
        return True

    def write_index(self) -> None:
        """The markers committed since the last part, as one part of this run's index (committed_shards
        reads the markers from these: a request per INDEX_EVERY shards, not per shard)."""
        if not self.unindexed or not self.run_id:
            return
        uri = join(self.output, INDEX, f"{self.run_id}-{self.index_parts:05d}.json")
        write_atomic(uri, json.dumps(self.unindexed).encode(), self.options)
        self.unindexed, self.index_parts = [], self.index_parts + 1

    def incomplete(self) -> list[str]:
        return sorted(self.pending)


def flag_counts(rows: pa.Table) -> Counter[str]:
    """How many candidates carry each caption flag (a table without the column: none)."""
    out: Counter[str] = Counter()
    if CAPTION_FLAGS in rows.column_names:
        for per_row in rows[CAPTION_FLAGS].to_pylist():
            for flags in per_row or []:
                out.update(flags or [])
    return out


def committed_shards(output: str, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Markers of previous runs: shard URI → marker (with its `name`, the output file's stem).

    One listing of `_committed/` (S3: a request per 1,000 markers) and the runs' marker indexes
    (`_index/`, a part per INDEX_EVERY commits: ShardCommitter.write_index) give them; only a
    marker that no index holds as it is now (a run cut short before its index part, a retry's rewrite: the
    listed size tells) is read on its own, concurrently. A resume over LAION-400M's 40,000 shards then
    takes ~80 requests, not 40,000."""
    fs, path = get_fs(join(output, COMMITTED), options)
    try:
        listed = fs.glob(path.rstrip("/") + "/*.json", detail=True)
    except FileNotFoundError:
        return {}
    ifs, ipath = get_fs(join(output, INDEX), options)
    try:
        parts = sorted(ifs.glob(ipath.rstrip("/") + "/*.json"))
    except FileNotFoundError:
        parts = []
    indexed: dict[str, bytes] = {}  # marker name → its bytes as the index holds them (later runs win)
    if parts:
        for _, data in sorted(ifs.cat(parts).items()):
            for marker in json.loads(data):
                indexed[marker["name"]] = json.dumps(marker).encode()
    names = {p: posixpath.basename(p)[: -len(".json")] for p in listed}
    unread = [p for p, name in names.items() if len(indexed.get(name, b"")) != listed[p].get("size")]
    read = fs.cat(unread) if unread else {}
    out = {}
    for p in sorted(listed):
        marker = json.loads(read[p] if p in read else indexed[names[p]])
        marker.setdefault("name", names[p])
        out[marker["source"]] = marker
    return out
