"""The vectorised batch paths (issue #16) against the per-item code they replaced."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from detectors.state import EntityTable
from detectors.telemetry.feature_reference import (
    CallerReference,
    FeatureReference,
    bin_counts,
)


def _learn_callers_per_caller(ref: FeatureReference, codes: np.ndarray, principals: list[str],
                              errors: np.ndarray | None, *, limit: int, bins: int) -> None:
    """The per-caller loop ``learn_callers`` was before it became one pass."""
    shape = (len(ref.names), bins + 1)
    uniq, inverse = np.unique(np.asarray(principals, dtype=object), return_inverse=True)
    for i, who in enumerate(uniq.tolist()):
        own = ref.callers.get(who)
        if own is None:
            own = ref.callers.touch(who, lambda: CallerReference(shape))
        if own.rows >= limit:
            continue
        rows = np.flatnonzero(inverse == i)[: limit - own.rows]
        own.counts += bin_counts(codes[rows], bins + 1)
        own.rows += len(rows)
        if errors is not None:
            own.errors += float(errors[rows].sum())


@pytest.mark.parametrize("seed", range(40))
def test_learn_callers_equals_the_per_caller_loop_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d, bins = int(rng.integers(1, 6)), 10
    expected = FeatureReference()
    expected.names = tuple(f"f{i}" for i in range(d))
    expected.callers = EntityTable(int(rng.integers(3, 60)))  # small: evictions happen
    got = copy.deepcopy(expected)
    principals_in_play = int(rng.integers(1, 80))
    for _ in range(8):
        n = int(rng.integers(1, 300))
        codes = rng.integers(0, bins + 1, size=(n, d)).astype(np.int16)
        # zipf: a few callers with many rows (pairwise sums) and many with one or two
        who = [f"p{int(x) % principals_in_play}" for x in rng.zipf(1.5, size=n)]
        errors = None if rng.random() < 0.2 else rng.lognormal(size=n)
        limit = int(rng.integers(1, 100))
        _learn_callers_per_caller(expected, codes, who, errors, limit=limit, bins=bins)
        got.learn_callers(codes, who, errors, limit=limit, bins=bins)
    assert list(got.callers) == list(expected.callers)  # same LRU order
    assert got.callers.evicted == expected.callers.evicted
    for name, want in expected.callers.items():
        have = got.callers.get(name)
        assert have is not None
        assert have.rows == want.rows
        assert have.errors == want.errors  # exactly: findings must not move
        assert have.counts.dtype == want.counts.dtype
        assert np.array_equal(have.counts, want.counts)
