"""Column names and output schemas: the one contract between stages, writers, tests and users."""

from __future__ import annotations

import pyarrow as pa

# Columns made by the readers.
KEY = "key"
SOURCE = "source"
IMAGE = "image"  # encoded bytes; dropped by the decode stage
TEXT = "text"
META = "meta"  # JSON string (img2dataset's KEY.json, or other columns of a Parquet row)
STATUS = "status"
ERROR = "error"

# Columns made by the decode stage.
PIXELS = "pixels"  # uint8 HxWx3 at the model's input size; never written
WIDTH = "width"
HEIGHT = "height"

# Columns made by the model stages.
CAPTION = "caption"
CAPTIONS = "captions"

OK = "ok"
# A row the reader emits after the last sample of a shard: it carries the shard's row count so the
# driver knows when a shard is complete and can commit it. Stages pass it through (status != ok) and
# the writer never writes it.
SHARD_END = "_shard_end"

# Error kinds a row's `status` can take (the `error` column says more).
READ_ERROR = "read_error"
MISSING_IMAGE = "missing_image"
DECODE_ERROR = "decode_error"
TOO_LARGE = "too_large"
UNSUPPORTED_FORMAT = "unsupported_format"

CAPTIONS_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(TEXT, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(CAPTIONS, pa.list_(pa.string())),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
        pa.field(META, pa.string()),
    ]
)

# Arrow types of the columns that pass between stages. Ray's numpy batches turn a string column that
# is all null into float NaN and a nullable int into float; our stage adapter converts with these.
COLUMN_TYPES: dict[str, pa.DataType] = {
    KEY: pa.string(), SOURCE: pa.string(), STATUS: pa.string(), ERROR: pa.string(), TEXT: pa.string(),
    META: pa.string(), IMAGE: pa.binary(), CAPTION: pa.string(), CAPTIONS: pa.list_(pa.string()),
    WIDTH: pa.int32(), HEIGHT: pa.int32(),
}
