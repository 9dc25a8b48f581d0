"""PRADA's per-principal state: growing sets G_c, their thresholds T_c, recorded distances.

Per (principal, model) and predicted class c, ``extraction.prada`` keeps a
growing set G_c of the principal's queries and a threshold T_c: a query
farther than T_c from G_c joins it, and every query's distance to G_c is
recorded in a ring whose normality is tested (see
:class:`~detectors.abuse.prada.PradaExtractionDetector`). G holds at most
``max_growing`` rows, the oldest replaced, so the cost per query is bounded.
Both G and the ring of distances start small and double as they fill, so a
principal's state is as large as what it has sent needs, up to the caps.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

from detectors.abuse.common import QueryState
from detectors.state_codec import state_type

__all__ = ["PradaState"]

_DUPLICATE: Final = 1e-6  # distance below which a query repeats an earlier one


@state_type("abuse.prada_principal")
class PradaState(QueryState):
    __slots__ = (
        "class_ids",
        "dists",
        "g_cls",
        "g_rows",
        "g_stats",
        "growing",
        "last_test",
        "n_dists",
        "preds",
        "thresholds",
        "w",
    )

    def __init__(self) -> None:
        super().__init__()
        self.preds: list[Any] = []
        self.g_rows: np.ndarray | None = None  # the growing set G (capped ring)
        self.g_cls: np.ndarray = np.empty(0, dtype=np.int32)  # class id of each G row
        self.class_ids: dict[Any, int] = {}  # prediction -> small int
        self.growing = 0  # rows ever added to G
        self.thresholds: dict[Any, float] = {}  # T_c
        self.g_stats: dict[Any, list[float]] = {}  # per class [n, sum, sum of squares]
        self.dists = np.empty(0, dtype=np.float32)  # ring of the last recorded distances
        self.n_dists = 0  # distances ever recorded
        self.last_test = 0
        self.w = 1.0

    def class_ids_of(self, preds: list[Any], dims: int, max_growing: int) -> np.ndarray:
        """Class ids of a batch's predictions; (re)creates G when needed."""
        ids = self.class_ids
        if len(ids) > 4 * max_growing:  # a regression output: start over, bounded
            ids.clear()
            self.thresholds.clear()
            self.g_stats.clear()
            self.growing = 0
            self.g_cls[:] = -1
        pc = np.fromiter((ids.setdefault(c, len(ids)) for c in preds), np.int32, len(preds))
        if self.g_rows is None or self.g_rows.shape[1] != dims:
            # Small at first: most principals' G stays small (grow() doubles it).
            self.g_rows = np.zeros((min(8, max_growing), dims), dtype=np.float32)
            self.g_cls = np.full(len(self.g_rows), -1, dtype=np.int32)
            self.growing = 0
        return pc

    def admit(
        self,
        x: np.ndarray,
        pc: np.ndarray,
        first: list[float],
        within: list[list[float]],
        max_growing: int,
    ) -> list[float]:
        """The distances a batch records; its queries farther than T_c join G_c.

        A query's distance is the smallest to G of its class: to the rows
        there before the batch (``first``) or to the batch's rows that joined
        before it (``within``, distances inside the batch). Repeats are skipped
        and a class's first query seeds G_c unrecorded.
        """
        added: list[tuple[int, int]] = []  # batch rows that joined G in this batch
        dists: list[float] = []
        thresholds, g_stats = self.thresholds, self.g_stats
        for i, c in enumerate(pc.tolist()):
            d = first[i]
            if added:
                row = within[i]
                for k, ck in added:
                    if ck == c and row[k] < d:
                        d = row[k]
            if d < _DUPLICATE:
                continue
            if d == math.inf:  # first query of this class: it seeds G_c
                self.grow(x[i], c, max_growing)
                added.append((i, c))
                continue
            dists.append(d)
            if d > thresholds.get(c, 0.0):
                self.grow(x[i], c, max_growing)
                added.append((i, c))
                n_s_q = g_stats.setdefault(c, [0.0, 0.0, 0.0])
                n_s_q[0] += 1
                n_s_q[1] += d
                n_s_q[2] += d * d
                mean = n_s_q[1] / n_s_q[0]
                sd = math.sqrt(max(n_s_q[2] / n_s_q[0] - mean * mean, 0.0))
                thresholds[c] = max(thresholds.get(c, 0.0), mean - sd)
        return dists

    def grow(self, row: np.ndarray, c: int, max_growing: int) -> None:
        """Add ``row`` (class id ``c``) to G: grow the arrays, then overwrite the oldest."""
        g = self.g_rows
        assert g is not None
        if self.growing >= len(g) and len(g) < max_growing:
            size = min(2 * len(g), max_growing)
            self.g_rows = g = np.concatenate([g, np.zeros((size - len(g), g.shape[1]), g.dtype)])
            self.g_cls = np.concatenate([self.g_cls, np.full(size - len(self.g_cls), -1, np.int32)])
        slot = self.growing % max_growing
        g[slot] = row
        self.g_cls[slot] = c
        self.growing += 1

    def record(self, dists: list[float], max_distances: int) -> int:
        """Keep ``dists`` in the ring of the last ``max_distances``; how many it holds."""
        if dists:
            size = len(self.dists)
            if size < max_distances and self.n_dists + len(dists) > size:
                # Grown as needed (doubling), not allocated full at the first distance.
                size = min(max(2 * size, self.n_dists + len(dists), 64), max_distances)
                grown = np.zeros(size, dtype=np.float32)
                grown[: len(self.dists)] = self.dists[: min(len(self.dists), size)]
                self.dists = grown
            at = (self.n_dists + np.arange(len(dists))) % max_distances
            self.dists[at] = dists
            self.n_dists += len(dists)
        return min(self.n_dists, max_distances)
