"""Small shards share read tasks (ray_adapter.pack): in order, each shard exactly once, big or
unknown-size shards alone, and never fewer tasks than the decode slots need."""

from __future__ import annotations

import pytest

from pipeline.io.shards import Shard
from pipeline.runner.ray_adapter import PACK_BYTES, TASKS_PER_SLOT, pack


def shards(*sizes: int | None) -> list[Shard]:
    return [Shard(uri=f"s3://b/{i:05d}.tar", format="webdataset", size=s) for i, s in enumerate(sizes)]


def test_a_thousand_small_shards_become_a_few_tasks_each_shard_once_in_order():
    many = shards(*[600_000] * 1000)  # 4 web JPEGs each
    tasks = pack(many, slots=3)
    assert [s for t in tasks for s in t] == many
    assert TASKS_PER_SLOT * 3 <= len(tasks) <= 20
    assert all(sum(s.size or 0 for s in t) <= PACK_BYTES for t in tasks)


def test_img2dataset_sized_shards_stay_one_a_task():
    big = shards(*[400 << 20] * 6)
    assert pack(big, slots=64) == [[s] for s in big]


@pytest.mark.parametrize("slots", [1, 4, 100])
def test_every_slot_gets_work_before_shards_share_a_task(slots):
    few = shards(*[1 << 20] * 8)
    tasks = pack(few, slots)
    assert len(tasks) >= min(len(few), TASKS_PER_SLOT * slots)
    assert [s for t in tasks for s in t] == few


def test_a_shard_of_unknown_size_or_a_big_one_is_alone():
    mixed = shards(1000, 1000, None, 1000, 500 << 20, 1000, 1000)
    tasks = pack(mixed, slots=1)
    assert [s for t in tasks for s in t] == mixed
    assert [mixed[2]] in tasks and [mixed[4]] in tasks
    assert [mixed[0], mixed[1]] in tasks and [mixed[5], mixed[6]] in tasks
