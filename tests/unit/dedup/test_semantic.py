"""SemDeDup on synthetic embeddings with known groups: the duplicates found are the planted ones."""

from __future__ import annotations

import numpy as np

from pipeline.dedup.semantic import cluster_duplicates, ranking, semdedup


def planted(groups: int, size: int, singles: int, dim: int = 64, noise: float = 0.02, seed: int = 0):
    """`groups` groups of `size` near-copies (cos ≥ ~0.99 within) among `singles` distinct unit vectors,
    shuffled → (embeddings, group id per row, -1 for a single)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((groups + singles, dim))
    rows = [centers[g] + noise * rng.standard_normal((size, dim)) for g in range(groups)] + [centers[groups:]]
    x = np.concatenate(rows)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    gid = np.concatenate([np.repeat(np.arange(groups), size), np.full(singles, -1)])
    perm = rng.permutation(len(x))
    return x[perm].astype(np.float32), gid[perm]


def test_the_planted_groups_are_found_with_one_item_of_each_kept():
    x, gid = planted(groups=60, size=5, singles=2000)
    out = semdedup(x, k=20, eps=0.05, seed=1)
    dup = out["duplicate_of"] >= 0
    truth_dups = 60 * 4  # all but one of each group
    true_pos = int(np.sum(dup & (gid >= 0)))
    assert true_pos / truth_dups >= 0.99  # recall
    assert true_pos / max(int(dup.sum()), 1) >= 0.99  # precision
    for g in range(60):  # exactly one of each group stays, and the others point into their group
        members = np.flatnonzero(gid == g)
        assert int(np.sum(~dup[members])) == 1
        assert all(gid[out["duplicate_of"][i]] == g for i in members if dup[i])
    assert np.all(out["similarity"][dup] >= 0.95)


def test_blockwise_equals_the_whole_matrix_and_only_earlier_items_count():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[1700] = x[10]  # an exact copy, ranked after its original
    order = np.arange(len(x))[::-1].copy()  # the last item first: 1700 now comes before 10
    sim, of = cluster_duplicates(x, order, eps=0.001)
    full = x @ x.T
    rank = np.empty(len(x), int)
    rank[order] = np.arange(len(x))
    for i in (0, 10, 1700, 2499):
        earlier = rank < rank[i]
        expect = full[i][earlier].max() if earlier.any() else np.nan
        assert np.isclose(sim[i], expect, atol=1e-5, equal_nan=True)
    assert of[10] == 1700 and of[1700] == -1  # the copy ranked first stays


def test_the_ranking_prefers_what_the_run_kept_then_the_strategy():
    csim = np.array([0.9, 0.5, 0.7, 0.6], np.float32)
    assert list(ranking("hard", csim)) == [1, 3, 2, 0]
    assert list(ranking("easy", csim)) == [0, 2, 3, 1]
    assert list(ranking("score", csim, score=np.array([1.0, np.nan, 3.0, 2.0]))) == [2, 3, 0, 1]
    assert list(ranking("hard", csim, preferred=np.array([True, False, True, False]))) == [2, 0, 1, 3]
