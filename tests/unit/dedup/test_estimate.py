"""`estimate dedup`'s sample: whole files spread over the output, holding at least the rows asked for."""

from __future__ import annotations

import pytest

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


def test_a_step_is_projected_as_a_fixed_part_plus_a_part_in_proportion():
    from pipeline.dedup.estimate import fit_step

    assert fit_step([1000, 2000], [3.0 + 1000 * 0.01, 3.0 + 2000 * 0.01], 100_000) == pytest.approx(3.0 + 1000)
    assert fit_step([1000, 2000], [5.0, 4.0], 100_000) == pytest.approx(4.0)  # noise: no negative slope, the larger sample's time
    assert fit_step([1000, 2000], [0.0, 10.0], 4000) == pytest.approx(20.0)  # no negative fixed part
    assert fit_step([2000], [4.0], 8000) == pytest.approx(16.0)  # one sample: in proportion
