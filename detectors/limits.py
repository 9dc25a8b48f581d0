"""Bounds on attacker-chosen numbers, applied before any statistic sees them.

A caller chooses its feature values: 1e308 overflows every sum and square
downstream (an SVD on such a matrix ran for minutes), and a column constant at
1e17 has no distinct histogram edges (pyod's HBOS refused to fit). Values
beyond :data:`FEATURE_LIMIT` in magnitude, infinities included, are clipped to
it; NaN (missing) is left alone.

>>> import numpy as np
>>> x = np.array([[1.0, 1e308], [-np.inf, np.nan]])
>>> clip_features(x), x.tolist()
(2, [[1.0, 10000000000000.0], [-10000000000000.0, nan]])
"""

from __future__ import annotations

from typing import Final

import numpy as np

__all__ = ["FEATURE_LIMIT", "clip_features"]

#: Largest feature magnitude any statistic sees. Squares of it still sum without
#: overflow (also in float32 distances), and a column constant at it still has
#: distinct histogram edges. Milliseconds since the epoch (~1.8e12) fit under it.
FEATURE_LIMIT: Final = 1e13


def clip_features(matrix: np.ndarray) -> int:
    """Clip ``matrix`` (float, writeable) in place to +-FEATURE_LIMIT; the count clipped."""
    big = np.abs(matrix) > FEATURE_LIMIT  # NaN compares False
    if not big.any():
        return 0
    np.clip(matrix, -FEATURE_LIMIT, FEATURE_LIMIT, out=matrix)
    return int(big.sum())
