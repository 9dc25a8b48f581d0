"""What a model's inputs look like: the feature schema, and who a change comes from.

:class:`FeatureSchema` maps an event's features (lists or dicts) to columns,
learnt from a model's first block; :func:`attribute` tells whether a window's
change comes from a few callers or from everyone; :func:`plain` and
:func:`scope_phrase` shape evidence and summaries. Shared by the telemetry
detectors through :mod:`detectors.telemetry.window`.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np

from detectors.limits import clip_features
from detectors.state_codec import state_type

__all__ = ["FeatureSchema", "attribute", "plain", "scope_phrase"]

#: Share of a model's first block of events a feature must appear in to be in its schema.
MIN_FEATURE_PRESENCE: Final = 0.05


def plain(value: Any) -> Any:
    """Evidence with numpy scalars made Python numbers (``round`` keeps numpy types).

    >>> type(plain({"x": [np.float64(0.5)]})["x"][0])
    <class 'float'>
    """
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@state_type("telemetry.feature_schema")
class FeatureSchema:
    """Feature names of a model and how to turn events' features into arrays.

    List features are positional and named ``f0..fn``; dict features by key.
    A feature whose reference values are mostly strings is *categorical*; the
    others are numeric, and a string met in a numeric feature counts as missing
    (``type_errors``). Numeric values beyond ``FEATURE_LIMIT`` in magnitude
    (infinities too) are clipped to it before any statistic sees them
    (``out_of_range``). ``None`` or an absent key is missing. At most
    ``max_features`` names are kept, the most frequent in the reference, and
    only those present in at least ``MIN_FEATURE_PRESENCE`` of its rows. The
    schema is learnt from a model's first block of events; features that first
    appear later are ignored (a model whose inputs change shape is a new version).

    >>> s = FeatureSchema.learn([[1.0, 2.0], {"f0": 3.0, "f1": None, "city": "x"}])
    >>> s.numeric, s.categorical
    (('f0', 'f1'), ('city',))
    >>> s.numeric_matrix([[1.0, 2.0], {"f0": 3.0, "f1": "oops"}]).tolist()
    [[1.0, 2.0], [3.0, nan]]
    >>> s.numeric_matrix([[1e308, -float("inf")]]).tolist(), s.out_of_range
    ([[10000000000000.0, -10000000000000.0]], 2)
    """

    #: Class default, so that schemas pickled before the counter existed load.
    out_of_range = 0

    def __init__(self, numeric: Sequence[str], categorical: Sequence[str]) -> None:
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        positions = [
            int(name[1:]) if name[:1] == "f" and name[1:].isdigit() else -1 for name in self.numeric
        ]
        self._positions = positions
        # List rows can be sliced when the numeric names are exactly f0..f{k-1}.
        self._prefix = positions == list(range(len(self.numeric)))
        self.type_errors = 0
        self.out_of_range = 0

    @classmethod
    def learn(cls, rows: Sequence[Any], max_features: int = 256) -> FeatureSchema:
        seen: Counter[str] = Counter()
        strings: Counter[str] = Counter()
        present: Counter[str] = Counter()
        lengths: Counter[int] = Counter()  # of list rows
        order: dict[str, int] = {}
        for row in rows:
            if isinstance(row, dict):
                present.update(row.keys())
                for name, value in row.items():
                    order.setdefault(name, len(order))
                    if value is not None:
                        seen[name] += 1
                        if isinstance(value, str):
                            strings[name] += 1
            else:
                # Positions past max_features lose every tie to lower ones: not counted,
                # so a 5000-long list costs no more than a short one.
                lengths[min(len(row), max_features)] += 1
        longer = sum(lengths.values())  # list rows with more than i values
        for i in range(max(lengths, default=0)):
            longer -= lengths.get(i, 0)
            name = f"f{i}"
            order.setdefault(name, len(order))
            seen[name] += longer
            present[name] += longer
        # One caller's odd row must not widen the schema (a row of 3000 keys made
        # every reference fit cost seconds): a feature is in rows enough.
        least = max(1, math.ceil(MIN_FEATURE_PRESENCE * len(rows)))
        common = [n for n in order if present[n] >= least]
        kept = sorted(common, key=lambda n: (-seen[n], order[n]))[:max_features]
        kept.sort(key=order.__getitem__)
        numeric = [n for n in kept if strings[n] * 2 <= seen[n]]
        categorical = [n for n in kept if strings[n] * 2 > seen[n]]
        return cls(numeric, categorical)

    def numeric_matrix(self, rows: Sequence[Any]) -> np.ndarray:
        """(rows, numeric features) float array; NaN where missing or not a number."""
        names, k = self.numeric, len(self.numeric)
        if not rows or not k:
            return np.empty((len(rows), k))
        # One flat list then np.fromiter: about half the cost of nested lists.
        flat: list[Any] = []
        extend = flat.extend
        pick = operator.itemgetter(*names)
        positions = self._positions
        for row in rows:
            if type(row) is dict:
                try:
                    got = pick(row)
                except KeyError:
                    extend(map(row.get, names))
                    continue
                if k == 1:
                    flat.append(got)
                else:
                    extend(got)
            elif self._prefix and len(row) >= k:
                extend(row if len(row) == k else row[:k])
            else:
                n = len(row)
                extend([row[p] if 0 <= p < n else None for p in positions])
        try:
            matrix = np.fromiter(flat, float, len(flat)).reshape(len(rows), k)
        except (TypeError, ValueError):
            matrix = self._slow_matrix(flat, len(rows), k)
        return self._bounded(matrix)

    def _slow_matrix(self, flat: list[Any], n: int, k: int) -> np.ndarray:
        try:
            return np.array(flat, dtype=float).reshape(n, k)
        except (TypeError, ValueError):
            clean: list[float | None] = []
            for v in flat:
                if isinstance(v, int | float) and not isinstance(v, bool):
                    clean.append(v)
                else:
                    if v is not None:
                        self.type_errors += 1
                    clean.append(None)
            return np.array(clean, dtype=float).reshape(n, k)

    def _bounded(self, matrix: np.ndarray) -> np.ndarray:
        """``matrix`` with values beyond +-FEATURE_LIMIT (and infinities) clipped to it."""
        self.out_of_range += clip_features(matrix)
        return matrix

    def categorical_columns(self, rows: Sequence[Any]) -> list[list[Any]]:
        """Raw values of each categorical feature (None where absent or a list row)."""
        return [
            [row.get(name) if type(row) is dict else None for row in rows]
            for name in self.categorical
        ]


def attribute(
    principals: Sequence[str],
    score: Callable[[np.ndarray], float],
    *,
    top: int = 5,
    min_rows: int = 20,
    rank_by: np.ndarray | None = None,
) -> dict[str, Any]:
    """Which callers' traffic makes a window's ``score`` exceed 1 (the threshold).

    For the ``top`` principals by volume (or by the sum of per-row ``rank_by``
    weights, e.g. outlying rows, so that a small caller sending only odd inputs
    is not hidden by big ones): their share of the window, the score
    of their rows alone and the score of the window without them. The change is
    ``single_principal`` when removing one principal brings the score below 1
    (or one principal sent the whole window), else ``population``.

    >>> who = ["a"] * 50 + ["b"] * 50
    >>> result = attribute(who, lambda m: 2.0 * m[:50].mean() if m.any() else 0.0)
    >>> result["scope"], result["principal"]
    ('single_principal', 'a')
    """
    arr = np.asarray(principals, dtype=object)
    n = len(arr)
    uniq, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    weight = counts if rank_by is None else np.bincount(inverse, weights=rank_by)
    order = np.argsort(-weight, kind="stable")[:top]
    rows: list[dict[str, Any]] = []
    culprit: str | None = None
    for i in order.tolist():
        mask = inverse == i
        alone = score(mask) if counts[i] >= min_rows else None
        rest = n - int(counts[i])
        without = score(~mask) if rest >= min_rows else None
        rows.append(
            {
                "principal": str(uniq[i]),
                "share": round(counts[i] / n, 4),
                "score_alone": None if alone is None else round(alone, 3),
                "score_without": None if without is None else round(without, 3),
            }
        )
        explains = without is not None and without < 1.0 and (alone is None or alone >= 1.0)
        if culprit is None and (explains or (len(uniq) == 1)):
            culprit = str(uniq[i])
    return {
        "scope": "single_principal" if culprit is not None else "population",
        "principal": culprit,
        "principals_in_window": len(uniq),
        "top_principals": rows,
    }



def scope_phrase(attribution: dict[str, Any]) -> str:
    """Words for a summary: who the change comes from."""
    if attribution["scope"] == "single_principal":
        return f"concentrated on caller {attribution['principal']}"
    return "across the caller population"
