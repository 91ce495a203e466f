"""Exact and perceptual duplicates from the hashes every job's decode stage writes (`sha256`, `phash`).

Exact: equal sha256. Perceptual: phashes within `max_distance` differing bits, found without comparing
every pair: split into max_distance + 1 bands, two hashes that close agree on at least one band
(pigeonhole), so only hashes sharing a band value are compared; the pairs found join groups (union-find).
Equal phashes are one value first, so a flood of one blank image costs one comparison, not n².
"""

from __future__ import annotations

import numpy as np

BUCKET = 4096  # hashes sharing a band value compared at a time (a bucket is compared block by block)


def phash_ints(hexes: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """16-hex-digit phashes → (uint64 values, mask of rows that have one)."""
    has = np.array([h is not None and len(h) == 16 for h in hexes], dtype=bool)
    values = np.zeros(len(hexes), dtype=np.uint64)
    values[has] = np.array([int(h, 16) for h in hexes if h is not None and len(h) == 16], dtype=np.uint64)
    return values, has


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    return np.bitwise_count(x.astype(np.uint64)).astype(np.int64)


def _bands(max_distance: int) -> list[tuple[int, int]]:
    n = max_distance + 1
    edges = np.linspace(0, 64, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


class UnionFind:
    """Groups joined pair by pair; each group's id is its smallest member."""

    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def perceptual_groups(values: np.ndarray, max_distance: int) -> np.ndarray:
    """Each of the distinct phash `values` (uint64) → a group id (the smallest index in its group)."""
    n = len(values)
    union = UnionFind(n)
    for lo, hi in _bands(max_distance):
        band = (values >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        sorted_band = band[order]
        starts = np.flatnonzero(np.r_[True, sorted_band[1:] != sorted_band[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts, ends, strict=True):
            if e - s < 2:
                continue
            members = order[s:e]
            for a in range(0, len(members), BUCKET):
                block = members[a : a + BUCKET]
                close = popcount((values[block][:, None] ^ values[members][None, :]).ravel()).reshape(len(block), -1)
                for i, j in zip(*np.nonzero(close <= max_distance), strict=True):
                    if block[i] != members[j]:
                        union.join(int(block[i]), int(members[j]))
    return np.array([union.find(i) for i in range(n)], dtype=np.int64)


def duplicates_by_group(group: np.ndarray, rank: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rows of equal `group` (where `valid`): all but the best-ranked (lowest `rank`) are duplicates of it
    → duplicate_of per row (-1: not a duplicate)."""
    out = np.full(len(group), -1, dtype=np.int64)
    rows = np.flatnonzero(valid)
    if not len(rows):
        return out
    order = rows[np.lexsort((rank[rows], group[rows]))]
    g = group[order]
    first = np.r_[True, g[1:] != g[:-1]]
    head = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    out[order[~first]] = head[~first]
    return out
