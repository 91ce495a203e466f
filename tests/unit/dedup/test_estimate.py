"""`estimate dedup`'s sample: whole files spread over the output, holding at least the rows asked for."""

from __future__ import annotations

from pipeline.dedup.estimate import sample_files


def markers(rows: list[int]) -> dict[str, dict]:
    return {f"s{i}": {"name": f"{i:05d}", "rows": r} for i, r in enumerate(rows)}


def test_the_sample_is_whole_files_spread_over_the_output_with_enough_rows():
    chosen = sample_files(markers([100] * 40), 350)
    assert [m["name"] for m in chosen] == ["00000", "00010", "00020", "00030"]  # every 10th
    uneven = sample_files(markers([10, 500, 10, 10, 10, 10]), 60)
    assert sum(m["rows"] for m in uneven) >= 60 and len({m["name"] for m in uneven}) == len(uneven)
    assert len(sample_files(markers([5, 5]), 1000)) == 2  # at most every file
    assert sample_files({}, 10) == []
