"""Blacklight's query fingerprints and the per-model index that matches them.

Li et al. 2022: a query is quantised, hashed over sliding windows and
fingerprinted by its largest window hashes (:func:`blacklight_fingerprints`);
:class:`BlacklightIndex` finds, at constant cost per query, the earlier query
of any principal that holds each hash. ``probing.blacklight`` is built on these.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from detectors.state_codec import state_type

__all__ = [
    "BlacklightIndex",
    "blacklight_fingerprints",
    "dedupe_rows",
    "latest_holders",
    "most_common_per_row",
]


def blacklight_fingerprints(
    quantised: np.ndarray, window: int, top_n: int, multipliers: np.ndarray
) -> np.ndarray:
    """Blacklight fingerprints: the ``top_n`` largest hashes of sliding windows.

    ``quantised`` is an int64 matrix (one query per row). Each window of
    ``window`` consecutive values is hashed (a multiply-add hash over int64,
    wrapping); a row's fingerprint is its ``top_n`` largest window hashes
    (fewer when the row has fewer windows), as in Li et al. 2022.

    >>> q = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6]], dtype=np.int64)
    >>> m = np.array([3, 5, 7], dtype=np.int64)
    >>> fp = blacklight_fingerprints(q, 3, 2, m)
    >>> len(set(fp[0]) & set(fp[1]))   # windows (1,2,3) and (2,3,4) are shared
    2
    """
    w = min(window, quantised.shape[1])
    span = quantised.shape[1] - w + 1
    with np.errstate(over="ignore"):
        # sum_j q[:, i + j] * m[j] for every window start i: w shifted slices
        # instead of a (rows, windows, w) view, fewer and smaller temporaries.
        hashes = quantised[:, :span] * multipliers[0]
        for j in range(1, w):
            hashes += quantised[:, j : j + span] * multipliers[j]
        hashes ^= hashes >> 29
        hashes *= np.int64(-4658895280553007687)
        hashes ^= hashes >> 32
    n = min(top_n, hashes.shape[1])
    if n < hashes.shape[1]:
        hashes = np.partition(hashes, hashes.shape[1] - n, axis=1)[:, -n:]
    result: np.ndarray = hashes
    return result


@state_type("abuse.blacklight_index")
class BlacklightIndex:
    """Inverted index hash -> latest query id as a fixed-size numpy hash table.

    Open addressing without probing: a hash lands in slot ``hash % size`` and
    overwrites whatever was there, so the table is a bounded, lossy "who had
    this hash most recently" map. Look-ups and inserts of a whole batch are two
    numpy gathers and scatters, so the cost per query does not depend on the
    history. Query ids map to (principal, digest) through a ring of
    ``owners_size`` entries.
    """

    __slots__ = ("digests", "filled", "keys", "next_id", "owners", "qids")

    owners_size: ClassVar[int] = 1 << 16

    def __init__(self, max_size: int) -> None:
        size = 1 << max(int(max_size - 1).bit_length(), 4)
        self.keys = np.zeros(size, dtype=np.int64)  # 0 = empty (real hashes are odd)
        self.qids = np.zeros(size, dtype=np.int64)
        self.owners: list[str | None] = [None] * self.owners_size
        self.digests = np.zeros(self.owners_size, dtype=np.int64)
        self.next_id = 1
        self.filled = 0

    def lookup(self, fps: np.ndarray) -> np.ndarray:
        """Earlier query id holding each hash of ``fps`` (0 where none)."""
        pos = fps & (len(self.keys) - 1)
        return np.where((self.keys[pos] == fps) & (fps != 0), self.qids[pos], 0)

    def add(self, fps: np.ndarray) -> int:
        """Insert a batch of fingerprints (ids from ``next_id`` on); see :meth:`own`."""
        base = self.next_id
        ids = np.arange(base, base + len(fps), dtype=np.int64)
        valid = fps != 0
        pos = (fps & (len(self.keys) - 1))[valid]
        self.filled += int((self.keys[pos] == 0).sum())
        self.keys[pos] = fps[valid]
        self.qids[pos] = np.broadcast_to(ids[:, None], fps.shape)[valid]
        self.next_id += len(fps)
        return base

    def own(self, base: int, principals: list[str], digests: np.ndarray) -> None:
        """Record the owners and digests of the queries ``base``, ``base + 1``, ..."""
        ring = np.arange(base, base + len(principals), dtype=np.int64) % self.owners_size
        self.digests[ring] = digests
        owners = self.owners
        for r, who in zip(ring.tolist(), principals, strict=True):
            owners[r] = who

    def owner(self, qid: int, next_id: int | None = None) -> tuple[str | None, int]:
        """Principal and digest of query ``qid``, as of when ``next_id`` was next."""
        if qid <= (self.next_id if next_id is None else next_id) - self.owners_size:
            return None, 0  # too old: its owner slot was reused
        r = qid % self.owners_size
        return self.owners[r], int(self.digests[r])


def latest_holders(fps: np.ndarray, earlier: np.ndarray, base: int) -> np.ndarray:
    """For each hash of a batch, the latest earlier query holding it (0: none).

    ``earlier`` holds the index's answer (queries of earlier batches); a hash
    also present in an earlier row j of this batch is held by ``base + j``.

    >>> fps = np.array([[3, 5], [5, 7], [5, 0]])
    >>> latest_holders(fps, np.zeros((3, 2), dtype=np.int64), 10).tolist()
    [[0, 0], [10, 0], [11, 0]]
    """
    rows, width = fps.shape
    flat = fps.ravel()
    order = np.argsort(flat, kind="stable")  # equal hashes grouped, earlier rows first
    ordered = flat[order]
    repeat = np.zeros(len(flat), dtype=bool)
    repeat[1:] = (ordered[1:] == ordered[:-1]) & (ordered[1:] != 0)
    inbatch = np.zeros(len(flat), dtype=np.int64)
    inbatch[order[1:][repeat[1:]]] = base + order[:-1][repeat[1:]] // width
    holders = inbatch.reshape(rows, width)
    return np.where(holders != 0, holders, earlier)


def most_common_per_row(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the most frequent non-zero value and its count (0, 0 if none).

    >>> v, n = most_common_per_row(np.array([[4, 0, 4, 2], [0, 0, 0, 0]]))
    >>> v.tolist(), n.tolist()
    ([4, 0], [2, 0])
    """
    s = np.sort(values, axis=1)
    width = s.shape[1]
    at = np.arange(width)
    start = np.ones(s.shape, dtype=bool)
    start[:, 1:] = s[:, 1:] != s[:, :-1]
    run_start = np.maximum.accumulate(np.where(start, at, 0), axis=1)
    run_len = np.where(s != 0, at - run_start + 1, 0)
    best = run_len.argmax(axis=1)
    rows = np.arange(len(s))
    return s[rows, best], run_len[rows, best]


def dedupe_rows(fps: np.ndarray) -> np.ndarray:
    """Each row sorted, repeated values set to 0 (no hash); real hashes made odd."""
    fps = np.sort(fps | 1, axis=1)
    fps[:, 1:][fps[:, 1:] == fps[:, :-1]] = 0
    return fps

