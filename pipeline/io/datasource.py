"""A Ray Data datasource with one read task per shard, streaming blocks as the readers yield them.

Ray's own `read_webdataset`/`read_parquet` drop or fail whole files on a bad member and know nothing
of our per-row statuses and shard-end rows, so the read tasks call our readers instead.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipeline.config import InputConfig
from pipeline.io.readers import READ_SCHEMA, read_shard
from pipeline.io.shards import Shard


class ShardDatasource(Datasource):
    def __init__(self, shards: list[Shard], cfg: InputConfig, options: dict[str, Any]):
        super().__init__()
        self.shards, self.cfg, self.options = shards, cfg, options

    def estimate_inmemory_data_size(self) -> int | None:
        sizes = [s.size for s in self.shards]
        return sum(s for s in sizes if s) or None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        return [
            ReadTask(
                partial(read_shard, s, self.cfg, self.options),
                BlockMetadata(num_rows=None, size_bytes=s.size, exec_stats=None, input_files=(s.uri,)),
                schema=READ_SCHEMA,
            )
            for s in self.shards
        ]

    def get_name(self) -> str:
        return "ReadShards"
