"""Where an input keeps each sample's image, alt-text and key, as the tools that write datasets lay it out.

Parquet: the columns are named by the user (`input.image_column`, `text_column`, `key_column`) or, with
`auto`, found from the file's schema by the first of these names that the schema holds with a usable type:

- image: `jpg` (img2dataset), `image` (Hugging Face `datasets`' Image feature: struct<bytes, path>), then
  `img`, `png`, `webp`, `jpeg`, `image_bytes`, `bytes`; else the schema's one binary column, if it has one.
  A column of bytes, or a struct with a `bytes` field of bytes, is usable.
- alt-text: `caption` (img2dataset's Parquet, Hugging Face), `txt`, `text` (COYO, DataComp, Hugging Face),
  `TEXT` (LAION), `alt_text`, `alt`; a string column. Null: the input has none.
- key: `key` (img2dataset), `uid` (DataComp); else `<file>/<row>`.

Webdataset: the image is the first member with an image extension, the alt-text the `txt` member (or
the member named by `input.text_column`, or a field of `KEY.json` named by `input.text_field`).

`check_inputs` runs on the driver before Ray starts: it reads the first Parquet footer of each input
pattern (bytes from the end) or the first sample of a tar, and raises a one-line `InputLayoutError` when no
image column can be found, a named one is unusable, or a job that scores the alt-text finds none.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import InputConfig
from pipeline.io.files import InfraError, open_input
from pipeline.io.shards import Shard
from pipeline.io.storage import get_fs

log = logging.getLogger(__name__)

AUTO = "auto"
IMAGE_NAMES = ("jpg", "image", "img", "png", "webp", "jpeg", "image_bytes", "bytes")
TEXT_NAMES = ("caption", "txt", "text", "TEXT", "alt_text", "alt")
KEY_NAMES = ("key", "uid")
WDS_TEXT_MEMBER = "txt"


class InputLayoutError(ValueError):
    """The input's columns do not fit the config: one line naming the file, its columns and the setting."""


@dataclass(frozen=True)
class ParquetColumns:
    """The columns a Parquet file is read by. `image_field`: the struct field that holds the bytes
    (`bytes` for Hugging Face's Image feature), None for a plain bytes column."""

    image: str
    image_field: str | None
    text: str | None
    key: str | None

    def describe(self) -> dict[str, Any]:
        image = f"{self.image}.{self.image_field}" if self.image_field else self.image
        return {"image": image, "text": self.text, "key": self.key}


def is_bytes(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _bytes_field(t: pa.DataType) -> str | None:
    """How a column of this type holds image bytes: '' as plain bytes, 'bytes' in a struct, None not at all."""
    if is_bytes(t):
        return ""
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            if t.field(i).name == "bytes" and is_bytes(t.field(i).type):
                return "bytes"
    return None


def _columns(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema)


def parquet_columns(schema: pa.Schema, cfg: InputConfig, where: str) -> ParquetColumns:
    """The columns of a Parquet file with this schema, as the config names them or found by name;
    InputLayoutError when there is no usable image column."""
    names = schema.names
    if cfg.image_column != AUTO:
        if cfg.image_column not in names:
            raise InputLayoutError(f"input {where}: no image column {cfg.image_column!r} (columns: {_columns(schema)}); "
                                   "set input.image_column to the column of image bytes, or 'auto'")
        field = _bytes_field(schema.field(cfg.image_column).type)
        if field is None:
            raise InputLayoutError(f"input {where}: input.image_column {cfg.image_column!r} holds "
                                   f"{schema.field(cfg.image_column).type}, not image bytes (binary, or a struct with a "
                                   f"'bytes' field) (columns: {_columns(schema)}); set input.image_column")
        image = cfg.image_column
    else:
        usable = [n for n in names if _bytes_field(schema.field(n).type) is not None]
        by_name = [n for n in IMAGE_NAMES if n in usable]
        if by_name:
            image = by_name[0]
        elif len(usable) == 1:
            image = usable[0]
        else:
            why = f"several columns of bytes ({', '.join(usable)})" if usable else "no column of image bytes"
            raise InputLayoutError(f"input {where}: {why} (columns: {_columns(schema)}); "
                                   "set input.image_column to the column of image bytes")
        field = _bytes_field(schema.field(image).type)
    if cfg.text_column is None:
        text = None
    elif cfg.text_column != AUTO:
        text = cfg.text_column if cfg.text_column in names else None  # checked by check_inputs where it matters
    else:
        text = next((n for n in TEXT_NAMES if n in names and _is_text(schema.field(n).type)), None)
    if cfg.key_column != AUTO:
        key = cfg.key_column if cfg.key_column in names else None
    else:
        key = next((n for n in KEY_NAMES if n in names), None)
    return ParquetColumns(image, field or None, text, key)


def wds_text(cfg: InputConfig) -> tuple[str | None, str | None]:
    """A tar's alt-text: (member extension, KEY.json field); both None when the input has none."""
    if cfg.text_column is None:
        return None, None
    if cfg.text_field:
        return None, cfg.text_field
    return (WDS_TEXT_MEMBER if cfg.text_column == AUTO else cfg.text_column), None


def json_text(meta: str | None, field: str) -> str | None:
    """The alt-text in a field of a sample's JSON metadata (img2dataset's KEY.json has `caption`)."""
    if not meta:
        return None
    try:
        value = json.loads(meta)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get(field) is None:
        return None
    v = value[field]
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _first_sample(shard: Shard, options: dict[str, Any]) -> tuple[str, dict[str, bytes]] | None:
    """The members of a tar's first sample (key, extension → bytes of its small members): reads only the
    tar's first few blocks."""
    fs, path = get_fs(shard.uri, options)
    key, parts = None, {}
    try:
        with open_input(fs, path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                dirname, base = posixpath.split(member.name)
                stem, _, ext = base.partition(".")
                k = posixpath.join(dirname, stem)
                if key is not None and k != key:
                    break
                key = k
                small = ext.lower() in ("txt", "json") or member.size < 65536
                fobj = tar.extractfile(member) if small else None
                parts[ext.lower()] = fobj.read() if fobj is not None else b""
    except (tarfile.TarError, EOFError, ValueError) as e:
        log.debug("input %s: first sample unreadable (%s): its reader reports it", shard.uri, e)
        return None  # a broken tar is the reader's to report, row by row
    return (key, parts) if key is not None else None


def check_inputs(shards: list[Shard], firsts: list[Shard], cfg: InputConfig, options: dict[str, Any],
                 alt_text: bool) -> dict[str, Any]:
    """Checks the first shard of each input pattern (`firsts`) against the config before Ray starts, and
    says what the run reads: {format: {image, text, key, from}}. `alt_text`: the job scores the alt-text,
    so an input without one is an error unless the config says there is none (input.text_column: null)."""
    used: dict[str, Any] = {}
    none_hint = "; or set input.text_column=null if the input has no alt-text"
    for shard in firsts:
        name = posixpath.basename(shard.uri.split("#", 1)[0].rstrip("/"))
        if shard.format == "parquet":
            schema = _footer_schema(shard, options)
            if schema is None:
                continue  # an unreadable footer is the data's: the reader makes it a row
            cols = parquet_columns(schema, cfg, shard.uri)
            if cfg.text_column not in (None, AUTO) and cols.text is None:
                raise InputLayoutError(f"input {shard.uri}: no alt-text column {cfg.text_column!r} (columns: "
                                       f"{_columns(schema)}); set input.text_column{none_hint}")
            if alt_text and cfg.text_column is not None and cols.text is None:
                raise InputLayoutError(f"input {shard.uri}: this job scores the alt-text, and no column holds one "
                                       f"(looked for {', '.join(TEXT_NAMES)}; columns: {_columns(schema)}); "
                                       f"set input.text_column{none_hint}")
            used.setdefault("parquet", {**cols.describe(), "from": name})
        elif shard.format == "webdataset":
            member, field = wds_text(cfg)
            desc = {"image": "KEY.<image extension>", "text": f"KEY.json[{field!r}]" if field else member and f"KEY.{member}",
                    "key": "KEY", "from": name}
            if alt_text and (member or field):
                first = _first_sample(shard, options)
                if first is not None:
                    key, parts = first
                    has = (json_text(parts["json"].decode("utf-8", "replace"), field) is not None
                           if field and "json" in parts else member in parts)
                    if not has:
                        what = f"field {field!r} in {key}.json" if field else f"member {key}.{member}"
                        raise InputLayoutError(
                            f"input {shard.uri}: this job scores the alt-text, and its first sample has no {what} "
                            f"(members: {', '.join(sorted(parts))}); set input.text_column to the alt-text member or "
                            f"input.text_field to a field of KEY.json{none_hint}")
            used.setdefault("webdataset", desc)
        elif shard.format == "folder":
            if alt_text and cfg.text_column is not None and shard.files is not None \
                    and not any(txt for _, _, txt in shard.files):
                raise InputLayoutError(f"input {shard.uri.split('#', 1)[0]}: this job scores the alt-text, and no image "
                                       "has a same-name .txt; set input.text_column=null if the input has no alt-text")
            used.setdefault("folder", {"image": "image files", "text": None if cfg.text_column is None else "same-name .txt",
                                       "key": "path", "from": name})
    return used


def _footer_schema(shard: Shard, options: dict[str, Any]) -> pa.Schema | None:
    """A Parquet file's schema from its footer (a read from the end of the file), None if unreadable."""
    fs, path = get_fs(shard.uri, options)
    try:
        with open_input(fs, path) as f:
            return pq.ParquetFile(f).schema_arrow
    except InfraError:
        raise  # the store's error, not the file's: the plan fails loudly
    except (OSError, ValueError, pa.ArrowException) as e:
        log.debug("input %s: footer unreadable (%s): its reader reports it", shard.uri, e)
        return None


def describe(used: dict[str, Any]) -> str:
    """One line of what the run reads: `parquet: image jpg, alt-text caption, key key (from 00000.parquet)`."""
    out = []
    for fmt, d in used.items():
        out.append(f"{fmt}: image {d['image']}, alt-text {d['text'] or 'none'}, key {d['key'] or '<file>/<row>'} "
                   f"(from {d['from']})")
    return "; ".join(out)
