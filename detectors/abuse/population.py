"""Who has been where in a model's input space: ``extraction.coverage``'s state.

:class:`CoverageState` is a principal's own (its breadth sketch and novelty
block); :class:`Population` is the map of coarse cells a model's callers
visited (the novelty signal); :class:`CoveragePeers` the model's callers'
latest breadth and its robust summary; :class:`SharedCoveragePeers` both, per
process, for the partition instances of one configured detector.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

from detectors.abuse.common import QueryState
from detectors.abuse.peers import SharedPeerValues
from detectors.abuse.sketch import EMPTY_SKETCH, distinct_estimate
from detectors.findings import Severity
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = [
    "LEVEL_BASE", "SHARED_PEERS", "CoveragePeers", "CoverageState", "Population",
    "SharedCoveragePeers",
]


@state_type("abuse.coverage_principal")
class CoverageState(QueryState):
    """A principal's breadth (KMV sketch of its fine cells) and its novelty block."""

    __slots__ = (
        "block_cells", "block_n", "block_novel", "block_start", "kmv", "levels", "waiting"
    )

    def __init__(self) -> None:
        super().__init__()
        self.kmv = EMPTY_SKETCH  # the k smallest cell hashes (8 bytes each)
        self.block_n = 0  # queries in the current novelty block
        self.block_novel = 0  # of which landed in cells no other principal visited
        self.block_cells: list[np.ndarray] = []  # the block's coarse cells, recounted at its end
        #: The model's (novel, queries) and the principal's followers when the block started.
        self.block_start: tuple[float, ...] = (0.0, 0.0, 0.0)
        #: A block over the novelty rule that waits for the others' traffic
        #: (a ``novelty._Waiting``; absent in older checkpoints).
        self.waiting: Any = None
        #: Its coverage when it had sent ``LEVEL_BASE * 2**k`` queries, k = 0, 1, ...
        #: (absent in older checkpoints).
        self.levels: list[float] = []


@state_type("abuse.coverage_population")
class Population:
    """Which coarse cells of a model's input space its callers have visited.

    A fixed open-addressing table (a cell hashes to one slot): the cell, the
    first principal seen there, and whether another principal has been there
    too. A cell shared by two principals is never overwritten, so a flood of
    new cells from one caller cannot erase the population's map.
    """

    __slots__ = (
        "cells", "first", "follows", "novel_batches", "p0", "shared", "shares", "totals"
    )

    def __init__(self, size: int, peers: int) -> None:
        self.cells = np.zeros(size, dtype=np.uint64)
        self.first = np.zeros(size, dtype=np.int64)
        self.shared = np.zeros(size, dtype=bool)
        #: Each principal's novel share in its latest unflagged block.
        self.shares: EntityTable[list[float]] = EntityTable(peers)
        self.p0 = math.nan  # the peer quantile at the latest block's end
        self.totals = [0.0, 0.0]  # novel queries and queries ever visited, all callers
        #: Principal -> the model's query count at its latest mostly novel batch
        #: (absent in older checkpoints).
        self.novel_batches: dict[str, float] = {}
        #: Principal (its seed) -> how many of its cells other principals entered
        #: while it was alone there (absent in older checkpoints).
        self.follows: dict[int, int] = {}

    def still_novel(self, cells: np.ndarray, who: int) -> int:
        """How many of ``cells`` (visited by ``who``) no other principal has visited
        since, as far as the table knows (a cell it lost counts as novel)."""
        slots = (cells & np.uint64(len(self.cells) - 1)).astype(np.intp)
        known = self.cells[slots] == cells
        familiar = known & (self.shared[slots] | (self.first[slots] != who))
        return int(len(cells) - familiar.sum())

    def followed(self, who: int) -> int:
        """How many of ``who``'s cells (none other's before) other principals entered."""
        counts: dict[int, int] = getattr(self, "follows", None) or {}
        return counts.get(who, 0)

    def _followed(self, owners: np.ndarray) -> None:
        counts: dict[int, int] | None = getattr(self, "follows", None)
        if counts is None:
            counts = self.follows = {}
        for owner, n in zip(*np.unique(owners, return_counts=True), strict=True):
            key = int(owner)
            counts[key] = counts.pop(key, 0) + int(n)  # latest last
        if len(counts) > 2 * self.shares.capacity:  # the least recently followed half
            for key in list(counts)[: len(counts) // 2]:
                del counts[key]

    def visit(self, cells: np.ndarray, who: int) -> int:
        """Visit ``cells`` as principal ``who``; how many were new to the others."""
        slots = (cells & np.uint64(len(self.cells) - 1)).astype(np.intp)
        known = self.cells[slots] == cells
        first = self.first[slots]
        familiar = known & (self.shared[slots] | (first != who))
        follow = known & ~self.shared[slots] & (first != who)  # into one other's cell
        if follow.any():
            self._followed(first[follow])
        self.shared[slots[known & (first != who)]] = True
        free = ~known & ~self.shared[slots]  # empty, or held by one other principal
        self.cells[slots[free]] = cells[free]
        self.first[slots[free]] = who
        return int(len(cells) - familiar.sum())


@state_type("abuse.coverage_peers")
class CoveragePeers:
    """Latest coverage of the model's principals and their robust summary."""

    __slots__ = (
        "kmv", "level_p90", "limit", "median", "p90", "population", "updates", "values"
    )

    def __init__(self, capacity: int, population: Population) -> None:
        self.values: EntityTable[list[float]] = EntityTable(capacity)
        self.population = population
        self.updates = 0
        self.median = math.nan
        self.p90 = math.nan
        self.limit = math.inf
        self.kmv = EMPTY_SKETCH  # all principals together: the model's explored space
        #: Per volume level (``LEVEL_BASE * 2**k`` queries), the 90th percentile
        #: of the coverage of the callers that reached it (absent in older checkpoints).
        self.level_p90: list[float] = []

    def refresh(
        self, population: EntityTable[list[float]], min_peers: int, min_cells: int, ratio: float
    ) -> None:
        """Summarise ``population`` (the callers' coverage, then their coverage at each
        volume level): median, 90th percentile, the limit ``max(min_cells, ratio *
        p90)`` (no limit under ``min_peers``), and each level's 90th percentile
        among the callers that reached it (NaN under ``min_peers``)."""
        if len(population) < min_peers:
            self.limit = math.inf
            self.level_p90 = []
            return
        rows = [x for _, x in population.items()]
        v = np.fromiter((x[0] for x in rows), dtype=np.float64)
        self.median = float(np.median(v))
        self.p90 = float(np.quantile(v, 0.9))
        self.limit = max(float(min_cells), ratio * self.p90)
        levels: list[float] = []
        for k in range(1, max(len(x) for x in rows)):
            at = [x[k] for x in rows if len(x) > k]
            if len(at) < min_peers:
                break
            levels.append(float(np.quantile(at, 0.9)))
        self.level_p90 = levels

    def matched(self, levels: list[float], ratio: float) -> tuple[int, float] | None:
        """The highest volume level at which a principal's coverage ``levels`` is known
        and ``min_peers`` callers reached it, if its coverage there is beyond ``ratio``
        times theirs: (level, the peers' 90th percentile there); else None."""
        peers = getattr(self, "level_p90", None) or []
        k = min(len(levels), len(peers)) - 1
        if k < 0 or levels[k] <= ratio * peers[k]:
            return None
        return k, peers[k]

    def report(
        self, covered: float, examined: int, peers: int, model_k: int, peer_ratio: float,
        matched: tuple[int, float, float] = (-1, math.nan, math.nan),
    ) -> tuple[Severity, str, dict[str, Any]]:
        """Severity, summary and evidence of a finding about a principal whose coverage
        ``covered`` is beyond :attr:`limit` and, at volume level ``matched`` = (level,
        its coverage there, the peers' 90th percentile there), beyond the peers'
        (``model_k``: this summary's sketch size)."""
        model_cells = max(distinct_estimate(self.kmv, model_k), covered)
        level, own_at, peers_at = matched
        ratio = own_at / max(peers_at, 1.0) if level >= 0 else covered / max(self.p90, 1.0)
        summary = (
            f"Principal's queries cover about {covered:.0f} input-space cells; after "
            f"{LEVEL_BASE << max(level, 0)} queries it had covered {ratio:.1f}x the 90th "
            f"percentile of the model's callers with as many queries: systematic "
            f"exploration as in model extraction; review its volume and purpose."
        )
        evidence = {
            "statistic": "distinct input-space grid cells queried (KMV estimate)",
            "observed_cells": round(covered, 1),
            "peer_median_cells": round(self.median, 1),
            "peer_p90_cells": round(self.p90, 1),
            "threshold_cells": round(self.limit, 1),
            "peers": peers,
            "share_of_explored_space": round(covered / model_cells, 4),
            "queries_examined": examined,
            "cells_per_query": round(covered / examined, 4),
            "matched_queries": LEVEL_BASE << max(level, 0),
            "matched_observed_cells": round(own_at, 1),
            "matched_peer_p90_cells": round(peers_at, 1),
        }
        return ("high" if ratio >= 3 * peer_ratio else "medium"), summary, evidence


#: Queries at the first volume level of a principal's coverage (then doubling).
LEVEL_BASE: Final = 64

SHARED_PEERS: Final = "_coverage_peers"  # its key in the detector's per-process pools


class SharedCoveragePeers(SharedPeerValues):
    """Per process and model, the model's callers as every partition instance sees them.

    Every partition instance of one configured coverage detector writes its
    principals' coverage here (the :class:`SharedPeerValues` table PRADA uses
    too), and visits and judges novelty in one shared
    :class:`Population`, so a model whose callers are spread over many input
    partitions still has ``min_peers`` (and ``novelty_min_peers``) peers.
    Keyed by principal (and cells are a set): a restored instance merging its
    own peers back in counts nobody twice. Lives in the detector's cap pools,
    never in a snapshot (an instance's snapshot holds its own principals'
    coverage and the model's population as it last saw it). Bounded:
    ``models`` models (least recently seen evicted) of ``max_peers`` each.
    """

    def __init__(self, models: int, max_peers: int) -> None:
        super().__init__(models, max_peers)
        self.populations: EntityTable[Population] = EntityTable(models)

    def join_model(self, model_id: str, peers: CoveragePeers) -> EntityTable[list[float]]:
        """The model's shared coverage table; ``peers`` now uses the shared population."""
        pop = self.populations.touch(model_id, lambda: peers.population)
        if pop is not peers.population:
            for who, share in peers.population.shares.items():
                if who not in pop.shares:  # a fresher value from another instance wins
                    pop.shares.insert(who, list(share))
            peers.population = pop
        return self.table(model_id)

