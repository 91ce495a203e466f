"""Exact and perceptual grouping: every pair within the distance is found through the bands, and the
best-ranked row of each group stays."""

from __future__ import annotations

import itertools

import numpy as np

from pipeline.dedup.hashes import duplicates_by_group, perceptual_groups, phash_ints, popcount


def test_the_bands_find_every_pair_within_the_distance():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    near = []
    for b in base[:100]:  # flip up to 4 bits
        bits = rng.choice(64, size=int(rng.integers(0, 5)), replace=False)
        near.append(b ^ np.uint64(sum(1 << int(i) for i in bits)))
    values = np.concatenate([base, np.array(near, dtype=np.uint64)])
    groups = perceptual_groups(values, max_distance=4)
    for i, j in itertools.combinations(range(len(values)), 2):  # brute force: the truth
        close = int(popcount(np.array([values[i] ^ values[j]], dtype=np.uint64))[0]) <= 4
        if close:
            assert groups[i] == groups[j]
    assert len(set(groups[:300].tolist())) == 300  # random 64-bit hashes are never within 4 bits


def test_the_best_ranked_row_of_a_group_stays():
    group = np.array([5, 5, 7, 5, 7, 9])
    rank = np.array([2, 0, 1, 3, 0, 0])
    valid = np.array([True, True, True, True, True, False])
    assert list(duplicates_by_group(group, rank, valid)) == [1, -1, 4, 1, -1, -1]


def test_phash_hex_round_trip():
    values, has = phash_ints(["ffffffffffffffff", None, "0000000000000001", "xyz"])
    assert list(has) == [True, False, True, False] and values[0] == np.uint64(2**64 - 1) and values[2] == 1
