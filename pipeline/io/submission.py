"""The Kaggle "Stable Diffusion — Image to Prompts" submission file: `imgId_eId,val`, one row per
(image, dimension), images in key order."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.columns import fixed_size_list_to_numpy
from pipeline.io.storage import get_fs, join
from pipeline.schema import KEY, PROMPT_EMBEDDING

log = logging.getLogger(__name__)


def write_submission(output: str, csv_uri: str, options: dict[str, Any] | None = None) -> int:
    """Reads OUT/embeddings/ and writes the CSV; returns the number of images. An image without a
    prompt embedding (it failed to decode) gets zeros, so the file still lists every image."""
    fs, path = get_fs(join(output, "embeddings"), options)
    table = pq.read_table(path, columns=[KEY, PROMPT_EMBEDDING], filesystem=fs).sort_by(KEY)
    values, valid = fixed_size_list_to_numpy(table[PROMPT_EMBEDDING])
    values = values.astype(np.float32)
    dim = values.shape[1]
    values[~valid] = 0.0
    if (~valid).any():
        log.warning("submission: %d images have no prompt embedding (see captions/ status); wrote zeros",
                    int((~valid).sum()))
    keys = np.asarray(table[KEY].to_pylist(), dtype=object)
    ids = [f"{k}_{e}" for k in keys for e in range(dim)]
    out = pa.table({"imgId_eId": pa.array(ids, pa.string()), "val": pa.array(values.ravel(), pa.float32())})
    cfs, cpath = get_fs(csv_uri, options)
    with cfs.open(cpath, "wb") as f:
        pacsv.write_csv(out, f, pacsv.WriteOptions(quoting_style="none"))
    return len(keys)
