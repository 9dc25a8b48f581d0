"""A K-minimum-values sketch of distinct uint64 hashes (bounded memory, any volume).

``extraction.coverage`` counts the distinct input-space cells a principal has
queried with it: 8 bytes per kept hash, exact up to ``k`` values and about
1/sqrt(k) relative error above.
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = ["EMPTY_SKETCH", "distinct_estimate", "kmv_update", "mix64"]


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: well-spread uint64 hashes of uint64 values."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def distinct_estimate(kmv: np.ndarray, k: int) -> float:
    """Distinct count from a K-minimum-values sketch (sorted unique uint64 hashes).

    Exact below ``k`` values; (k - 1) / (k-th smallest hash / 2**64) above.

    >>> distinct_estimate(np.array([3, 5], dtype=np.uint64), 4)
    2.0
    >>> round(distinct_estimate(np.array([1, 2, 2**62], dtype=np.uint64), 3))
    8
    """
    if len(kmv) < k:
        return float(len(kmv))
    return (k - 1) / ((float(kmv[k - 1]) + 1.0) / 2.0**64)


def kmv_update(kmv: np.ndarray, hashes: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` smallest distinct values of ``kmv`` and ``hashes`` (sorted)."""
    if len(kmv) >= k:  # full: most batches bring nothing below the k-th value
        hashes = hashes[hashes < kmv[k - 1]]
        if not len(hashes):
            return kmv
    merged = np.sort(np.concatenate([kmv, hashes]))
    keep = np.empty(len(merged), dtype=bool)
    keep[:1] = True
    np.not_equal(merged[1:], merged[:-1], out=keep[1:])
    return merged[keep][:k]  # (np.unique hashes first: several times slower here)


EMPTY_SKETCH: Final = np.empty(0, dtype=np.uint64)

