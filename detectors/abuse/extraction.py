"""Model extraction: a principal copying the model through its query API.

- :class:`PradaExtractionDetector` (Juuti et al. 2019): the distribution of
  distances between a principal's new queries and its earlier ones is close to
  normal for natural queries and far from it for synthetic extraction queries
  (Jacobian augmentation, perturbation families); Shapiro-Wilk's W below
  ``delta`` raises the alarm.
- :class:`CoverageExtractionDetector` (after Kesarwani et al. 2018): how much of
  the model's input space a principal has explored (distinct cells of a
  random-projection grid, counted with a bounded sketch), against the other
  principals of the same model. This is the signal that also catches a
  natural-data "knockoff" thief, whose single queries look like anybody's but
  whose breadth does not; a fast thief is also caught by ``volume.peer_rate``.

Measured on the digits victim of ``tests/abuse`` (``evaluate_abuse.py``, three
seeds, 40 benign callers each, no benign finding): PRADA finds HopSkipJump
after 128 queries and BoundaryAttack after 192-576, but not the Jacobian
augmentation thief (W 0.93-0.98, like benign callers; Blacklight finds that one
after 128-288 queries). The natural-data knockoff thief evades PRADA entirely;
coverage finds it after 560-624 queries, fast or slow (by then its copy is
87-91% accurate against the victim's 95%, so coverage limits, not prevents,
theft); ``volume.peer_rate`` finds the fast one (1 query/s) after 30-36.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from functools import lru_cache
from typing import Any, ClassVar, Final

import numpy as np

from detectors.abuse.common import (
    ATLAS_EXTRACTION,
    BatchedQueryDetector,
    Judgement,
    QueryState,
    SharedPeerValues,
    by_model,
    peer_values,
    share_peer_values,
)
from detectors.abuse.probing import binomial_critical_count
from detectors.abuse.space import ModelSpace, stable_seed, stacked_sq_dists
from detectors.base import _POOLS
from detectors.events import InferenceEvent
from detectors.findings import Finding, Source
from detectors.state import CapPool, EntityTable
from detectors.state_codec import state_type

__all__ = [
    "CoverageExtractionDetector",
    "PradaExtractionDetector",
    "distinct_estimate",
    "kmv_update",
    "royston_sigma",
    "shapiro_w",
]

_DUPLICATE: Final = 1e-6  # distance below which a query repeats an earlier one


@lru_cache(maxsize=256)
def _swilk_coefficients(n: int) -> np.ndarray:
    """Shapiro-Wilk weights a_1..a_n for samples of size n (Royston 1992, AS R94)."""
    from scipy.special import ndtri

    m = ndtri((np.arange(1, n + 1) - 0.375) / (n + 0.25))
    c = m / math.sqrt(float(m @ m))
    u = 1.0 / math.sqrt(n)
    an = c[-1] + np.polyval([-2.706056, 4.434685, -2.071190, -0.147981, 0.221157, 0.0], u)
    a = m.copy()
    if n > 5:
        an1 = c[-2] + np.polyval([-3.582633, 5.682633, -1.752461, -0.293762, 0.042981, 0.0], u)
        phi = (m @ m - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * an**2 - 2 * an1**2)
        a = m / math.sqrt(phi)
        a[-1], a[-2], a[0], a[1] = an, an1, -an, -an1
    else:
        phi = (m @ m - 2 * m[-1] ** 2) / (1 - 2 * an**2)
        a = m / math.sqrt(phi)
        a[-1], a[0] = an, -an
    a.flags.writeable = False
    result: np.ndarray = a
    return result


def shapiro_w(distances: np.ndarray, clip_sigma: float = 3.0) -> float:
    """Shapiro-Wilk W of ``distances`` after dropping values beyond ``clip_sigma`` SDs.

    PRADA's test statistic: near 1 for normal-looking samples. Computed with
    Royston's weights, cached per sample size (scipy's ``shapiro`` gives the
    same W to about 1e-4 but costs several times more per call).

    >>> rng = np.random.default_rng(0)
    >>> shapiro_w(rng.normal(5, 1, 500)) > 0.99, shapiro_w(rng.exponential(1, 500)) < 0.9
    (True, True)
    """
    d = np.asarray(distances, dtype=np.float64)
    mu, sd = d.mean(), d.std()
    if sd > 0:
        d = d[np.abs(d - mu) <= clip_sigma * sd]
    if len(d) < 3 or np.ptp(d) == 0:
        return 0.0
    d = np.sort(d)
    centred = d - d.mean()
    w = float(_swilk_coefficients(len(d)) @ d) ** 2 / float(centred @ centred)
    return min(w, 1.0)


@state_type("abuse.prada_principal")
class _PradaState(QueryState):
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


def royston_sigma(n: int) -> float:
    """Standard deviation of log(1 - W) for n normal values (Royston 1992, 12 <= n <= 5000).

    >>> round(royston_sigma(500), 3)
    0.416
    """
    u = math.log(min(max(n, 12), 5000))
    return math.exp(0.0030302 * u * u - 0.082676 * u - 0.4803)


def _log_gap(w: float) -> float:
    """log(1 - W): near normal across samples (Royston), large when W is small."""
    return math.log(max(1.0 - w, 1e-12))


_PRADA_PEERS: Final = "_prada_peers"  # its key in the detector's per-process pools


@state_type("abuse.prada_peers")
class _PradaPeers:
    """The model's principals' latest log(1 - W) (as this instance saw them)."""

    __slots__ = ("values",)

    def __init__(self, capacity: int) -> None:
        self.values: EntityTable[list[float]] = EntityTable(capacity)


class PradaExtractionDetector(BatchedQueryDetector):
    """Non-normal distances between a principal's queries (PRADA).

    Per (principal, model) and predicted class c: a growing set G_c and a
    threshold T_c. Each query x predicted as c gets d = min distance to G_c
    (in the model's robustly scaled space, see :class:`ModelSpace`, projected
    to ``max_dims``); d is recorded, and if d > T_c, x joins G_c and
    T_c = max(T_c, mean - sd of the distances that let points into G_c).
    Every ``test_every`` queries, once ``min_distances`` are recorded, W is
    Shapiro-Wilk's statistic of the last ``max_distances`` distances
    (3-sigma clipped). G holds at most ``max_growing`` rows (oldest replaced),
    so the cost per query is bounded. Exact repeats of one of the principal's
    recent queries are skipped (a retry is not exploration; it would record
    a distance of 0 or the same distance again).

    The threshold is calibrated per model on its population of callers, not
    fixed: how normal natural distances look depends on the data (repeated
    records, quantised and heavy-tailed features, interactive sessions). The
    model keeps each principal's latest log(1 - W) (near normal across samples,
    Royston 1992); a principal is reported when its log(1 - W) exceeds the
    median of the *other* principals' values by ``z`` robust deviations,
    z = Phi^-1(1 - ``alpha``) (a principal as typical as its peers is reported
    on about ``alpha`` of its tests), a deviation being 1.4826 x their median
    absolute deviation and at least the sampling deviation of log(1 - W) for
    the number of distances tested (Royston), and when W < ``max_w`` (0.9, the
    paper's delta: on the world suite benign callers whose W was 0.91-0.98
    exceeded their peers' bar while no attack was found by it; a caller must
    be non-normal by the paper's bar and against its peers). Until ``min_peers``
    other principals of the model have a value, the fixed threshold ``delta``
    of the paper applies (W < 0.9: attacks that start before the model's
    callers have been tested are still seen). Each principal contributes one
    value (its latest, flagged or not: a model whose callers all look
    non-normal must still calibrate) and is judged against the others only,
    so neither one account nor fewer than half of the callers can move the
    bar (median and MAD). In the pipeline the peers are the model's callers of
    every partition the process holds (a per-process table shared by the
    detector's partition instances,
    :class:`~detectors.abuse.common.SharedPeerValues`), not only those of the
    judged principal's partition.

    >>> from detectors.testing import feed
    >>> rng = np.random.default_rng(1)
    >>> def q(i, who, x):
    ...     return InferenceEvent(ts=float(i), model_id="m", request_id=str(i),
    ...         principal=who, features=x.tolist(), prediction=int(x[0] > 0))
    >>> natural = [q(i, f"u{i % 6}", rng.normal(size=8)) for i in range(1800)]
    >>> feed(PradaExtractionDetector(), natural)
    []
    >>> seeds = rng.normal(size=(4, 8))   # synthetic: 4 seeds perturbed at scales 1e-3..1
    >>> steps = [seeds[i % 4] + 10 ** rng.uniform(-3, 0) * rng.normal(size=8)
    ...          for i in range(300)]
    >>> thief = [q(1800 + i, "thief", x) for i, x in enumerate(steps)]
    >>> [(f.entity.id, f.evidence["queries_examined"], f.evidence["observed_w"]) for f in
    ...  feed(PradaExtractionDetector(max_w=0.98), natural + thief)]
    [('thief', 128, 0.9214)]

    Its W of 0.92 is within what benign callers of other data show (0.91-0.98
    in the world suite, against peers at 0.99): by default the threshold is
    never above the paper's 0.9, and such a thief is left to the near-duplicate
    detectors (kNN, Blacklight).

    >>> feed(PradaExtractionDetector(), natural + thief)
    []
    """

    name: ClassVar[str] = "extraction.prada"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "spaces", "peers")
    kind: ClassVar[str] = "model_extraction"
    atlas: ClassVar[list[str]] = ATLAS_EXTRACTION
    skip_repeats: ClassVar[bool] = True
    robust_space: ClassVar[bool] = True

    def __init__(
        self,
        delta: float = 0.9,
        max_w: float = 0.9,
        alpha: float = 1e-6,
        min_peers: int = 4,
        max_peers: int = 4096,
        min_distances: int = 100,
        max_distances: int = 500,
        test_every: int = 64,
        max_growing: int = 128,
        batch_size: int = 32,
        cooldown_seconds: float = 3600.0,
        calibration_rows: int = 256,
        max_dims: int = 32,
        max_principals: int = 10_000,
        seed: int = 0,
    ) -> None:
        if not 0 < delta < 1 or not 0 < max_w <= 1 or not 20 <= min_distances <= max_distances:
            raise ValueError(
                "delta in (0, 1), max_w in (0, 1], 20 <= min_distances <= max_distances"
            )
        if not 0 < alpha < 1 or min_peers < 1 or max_peers < min_peers:
            raise ValueError("alpha in (0, 1), 1 <= min_peers <= max_peers")
        from scipy.stats import norm

        self.delta = delta
        self.max_w = max_w
        self.alpha = alpha
        self.z = float(norm.isf(alpha))
        self.min_peers = min_peers
        self.max_peers = max_peers
        self.min_distances = min_distances
        self.max_distances = max_distances
        self.test_every = test_every
        self.max_growing = max_growing
        self.peers: EntityTable[_PradaPeers] = EntityTable(1024)
        self._setup(
            batch_size=batch_size,
            cooldown_seconds=cooldown_seconds,
            max_principals=max_principals,
            calibration_rows=calibration_rows,
            max_dims=max_dims,
            seed=seed,
        )

    def new_state(self) -> QueryState:
        return _PradaState()

    def remember(self, st: QueryState, event: InferenceEvent) -> None:
        st.preds.append(event.prediction)  # type: ignore[attr-defined]

    def take(self, st: QueryState) -> Any:
        preds, st.preds = st.preds, []  # type: ignore[attr-defined]
        return preds

    def _class_ids(self, st: _PradaState, preds: list[Any], dims: int) -> np.ndarray:
        """Class ids of the batch's predictions; (re)creates G when needed."""
        ids = st.class_ids
        if len(ids) > 4 * self.max_growing:  # a regression output: start over, bounded
            ids.clear()
            st.thresholds.clear()
            st.g_stats.clear()
            st.growing = 0
            st.g_cls[:] = -1
        pc = np.fromiter((ids.setdefault(c, len(ids)) for c in preds), np.int32, len(preds))
        if st.g_rows is None or st.g_rows.shape[1] != dims:
            st.g_rows = np.zeros((min(32, self.max_growing), dims), dtype=np.float32)
            st.g_cls = np.full(len(st.g_rows), -1, dtype=np.int32)
            st.growing = 0
        return pc

    def judge_run(self, run: list[Judgement]) -> list[list[Finding] | None]:
        out: list[list[Finding] | None] = [None] * len(run)
        for at in by_model(run):
            x = run[at[0]].space.embed_stack(
                [r for i in at for r in run[i].rows], self.batch_size
            )
            states = [run[i].st for i in at]
            pcs = [
                self._class_ids(st, run[i].taken, x.shape[2])  # type: ignore[arg-type]
                for st, i in zip(states, at, strict=True)
            ]
            within = np.sqrt(stacked_sq_dists(x, x))
            # Min distance to G of the query's class, batches with equal G stacked.
            first = np.full(x.shape[:2], np.inf)
            same: dict[int, list[int]] = {}
            for b, st in enumerate(states):
                filled = min(st.growing, self.max_growing)  # type: ignore[attr-defined]
                if filled:
                    same.setdefault(filled, []).append(b)
            for filled, blocks in same.items():
                g = np.stack([states[b].g_rows[:filled] for b in blocks])  # type: ignore[attr-defined]
                cls = np.stack([states[b].g_cls[:filled] for b in blocks])  # type: ignore[attr-defined]
                sq = stacked_sq_dists(x[blocks], g)
                pc = np.stack([pcs[b] for b in blocks])
                sq[cls[:, None, :] != pc[:, :, None]] = np.inf
                first[blocks] = np.sqrt(sq.min(axis=2))
            for b, i in enumerate(at):
                out[i] = self._judged_batch(
                    run[i], x[b], pcs[b], first[b].tolist(), within[b].tolist()
                )
        return out

    def _judged_batch(
        self,
        j: Judgement,
        x: np.ndarray,
        pc: np.ndarray,
        first: list[float],
        within: list[list[float]],
    ) -> list[Finding] | None:
        st, event, source = j.st, j.event, j.source
        assert isinstance(st, _PradaState)
        added: list[tuple[int, int]] = []  # batch rows that joined G in this batch
        dists: list[float] = []  # recorded in this batch
        thresholds, g_stats = st.thresholds, st.g_stats
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
                self._grow(st, x[i], c)
                added.append((i, c))
                continue
            dists.append(d)
            if d > thresholds.get(c, 0.0):
                self._grow(st, x[i], c)
                added.append((i, c))
                n_s_q = g_stats.setdefault(c, [0.0, 0.0, 0.0])
                n_s_q[0] += 1
                n_s_q[1] += d
                n_s_q[2] += d * d
                mean = n_s_q[1] / n_s_q[0]
                sd = math.sqrt(max(n_s_q[2] / n_s_q[0] - mean * mean, 0.0))
                thresholds[c] = max(thresholds.get(c, 0.0), mean - sd)
        if dists:
            if len(st.dists) < self.max_distances:
                st.dists = np.zeros(self.max_distances, dtype=np.float32)
            at = (st.n_dists + np.arange(len(dists))) % self.max_distances
            st.dists[at] = dists
            st.n_dists += len(dists)
        st.examined += len(pc)
        held = min(st.n_dists, self.max_distances)
        if held < self.min_distances or st.examined - st.last_test < self.test_every:
            return None
        st.last_test = st.examined
        st.w = shapiro_w(st.dists[:held])
        peers = self.peers.touch(event.model_id, lambda: _PradaPeers(self.max_peers))
        # The model's callers of every partition of the process (shared), else this
        # instance's: the same table when the detector runs unpartitioned.
        values = peer_values(self, _PRADA_PEERS, event.model_id, peers.values)
        threshold, median_w, n_peers = self.limit(values, event.principal, held)
        gap = [_log_gap(st.w)]
        values.touch(event.principal, list)[:] = gap
        if values is not peers.values:  # kept for this instance's snapshot
            peers.values.touch(event.principal, list)[:] = gap
        if st.w >= threshold or self.quiet(st, event.ts):  # type: ignore[arg-type]
            return None
        return self.finding(
            st,
            event,
            source,
            severity="high" if st.w < threshold - 0.1 else "medium",
            summary=(
                f"Distances between this principal's queries are far from normal "
                f"(Shapiro-Wilk W={st.w:.3f} over {held} queries, threshold {threshold:.3f}; "
                f"median of the model's other callers {median_w:.3f}): synthetic extraction "
                f"queries are likely; review and rate-limit the caller."
            ),
            evidence={
                "statistic": "Shapiro-Wilk W of min distances to earlier queries (PRADA)",
                "observed_w": round(st.w, 4),
                "threshold_w": round(threshold, 4),
                "peer_median_w": round(median_w, 4) if n_peers else None,
                "peers": n_peers,
                "calibrated": n_peers >= self.min_peers,
                "alpha": self.alpha,
                "distances_tested": held,
                "queries_examined": st.examined,
                "growing_set_size": min(st.growing, self.max_growing),
                "classes_seen": len(st.class_ids),
            },
        )

    def share_caps(self, pools: MutableMapping[str, CapPool]) -> None:
        """Also judge against the model's callers of every partition (see
        :class:`~detectors.abuse.common.SharedPeerValues`)."""
        super().share_caps(pools)
        share_peer_values(pools, _PRADA_PEERS, self.peers.capacity, self.max_peers,
                          self.peers, lambda p: p.values)

    def limit(
        self, peers: EntityTable[list[float]], principal: str, held: int
    ) -> tuple[float, float, int]:
        """(W threshold, the other principals' median W, their number) for ``principal``.

        The fixed ``delta`` until ``min_peers`` others have been tested.
        """
        values = [v[0] for who, v in peers.items() if who != principal]
        if len(values) < self.min_peers:
            return self.delta, math.nan, len(values)
        gaps = np.array(values)
        median = float(np.median(gaps))
        spread = max(1.4826 * float(np.median(np.abs(gaps - median))), royston_sigma(held))
        threshold = min(1.0 - math.exp(median + self.z * spread), self.max_w)
        return threshold, 1.0 - math.exp(median), len(values)

    def _grow(self, st: _PradaState, row: np.ndarray, c: int) -> None:
        """Add ``row`` (class id ``c``) to G: grow the arrays, then overwrite the oldest."""
        g = st.g_rows
        assert g is not None
        if st.growing >= len(g) and len(g) < self.max_growing:
            size = min(2 * len(g), self.max_growing)
            st.g_rows = g = np.concatenate([g, np.zeros((size - len(g), g.shape[1]), g.dtype)])
            st.g_cls = np.concatenate([st.g_cls, np.full(size - len(st.g_cls), -1, np.int32)])
        slot = st.growing % self.max_growing
        g[slot] = row
        st.g_cls[slot] = c
        st.growing += 1


def _mix64(values: np.ndarray) -> np.ndarray:
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


_EMPTY_SKETCH: Final = np.empty(0, dtype=np.uint64)


@state_type("abuse.coverage_principal")
class _CoverageState(QueryState):
    __slots__ = ("block_cells", "block_n", "block_novel", "block_start", "kmv")

    def __init__(self) -> None:
        super().__init__()
        self.kmv = _EMPTY_SKETCH  # the k smallest cell hashes (8 bytes each)
        self.block_n = 0  # queries in the current novelty block
        self.block_novel = 0  # of which landed in cells no other principal visited
        self.block_cells: list[np.ndarray] = []  # the block's coarse cells, recounted at its end
        self.block_start = (0.0, 0.0)  # the model's (novel, queries) when the block started


@state_type("abuse.coverage_population")
class _Population:
    """Which coarse cells of a model's input space its callers have visited.

    A fixed open-addressing table (a cell hashes to one slot): the cell, the
    first principal seen there, and whether another principal has been there
    too. A cell shared by two principals is never overwritten, so a flood of
    new cells from one caller cannot erase the population's map.
    """

    __slots__ = ("cells", "first", "p0", "shared", "shares", "totals")

    def __init__(self, size: int, peers: int) -> None:
        self.cells = np.zeros(size, dtype=np.uint64)
        self.first = np.zeros(size, dtype=np.int64)
        self.shared = np.zeros(size, dtype=bool)
        #: Each principal's novel share in its latest unflagged block.
        self.shares: EntityTable[list[float]] = EntityTable(peers)
        self.p0 = math.nan  # the peer quantile at the latest block's end
        self.totals = [0.0, 0.0]  # novel queries and queries ever visited, all callers

    def still_novel(self, cells: np.ndarray, who: int) -> int:
        """How many of ``cells`` (visited by ``who``) no other principal has visited
        since, as far as the table knows (a cell it lost counts as novel)."""
        slots = (cells & np.uint64(len(self.cells) - 1)).astype(np.intp)
        known = self.cells[slots] == cells
        familiar = known & (self.shared[slots] | (self.first[slots] != who))
        return int(len(cells) - familiar.sum())

    def visit(self, cells: np.ndarray, who: int) -> int:
        """Visit ``cells`` as principal ``who``; how many were new to the others."""
        slots = (cells & np.uint64(len(self.cells) - 1)).astype(np.intp)
        known = self.cells[slots] == cells
        first = self.first[slots]
        familiar = known & (self.shared[slots] | (first != who))
        self.shared[slots[known & (first != who)]] = True
        free = ~known & ~self.shared[slots]  # empty, or held by one other principal
        self.cells[slots[free]] = cells[free]
        self.first[slots[free]] = who
        return int(len(cells) - familiar.sum())


@state_type("abuse.coverage_peers")
class _Peers:
    """Latest coverage of the model's principals and their robust summary."""

    __slots__ = ("kmv", "limit", "median", "p90", "population", "updates", "values")

    def __init__(self, capacity: int, population: _Population) -> None:
        self.values: EntityTable[list[float]] = EntityTable(capacity)
        self.population = population
        self.updates = 0
        self.median = math.nan
        self.p90 = math.nan
        self.limit = math.inf
        self.kmv = _EMPTY_SKETCH  # all principals together: the model's explored space


_SHARED_PEERS: Final = "_coverage_peers"  # its key in the detector's per-process pools


class _SharedPeers(SharedPeerValues):
    """Per process and model, the model's callers as every partition instance sees them.

    Every partition instance of one configured coverage detector writes its
    principals' coverage here (the :class:`SharedPeerValues` table PRADA uses
    too), and visits and judges novelty in one shared
    :class:`_Population`, so a model whose callers are spread over many input
    partitions still has ``min_peers`` (and ``novelty_min_peers``) peers.
    Keyed by principal (and cells are a set): a restored instance merging its
    own peers back in counts nobody twice. Lives in the detector's cap pools,
    never in a snapshot (an instance's snapshot holds its own principals'
    coverage and the model's population as it last saw it). Bounded:
    ``models`` models (least recently seen evicted) of ``max_peers`` each.
    """

    def __init__(self, models: int, max_peers: int) -> None:
        super().__init__(models, max_peers)
        self.populations: EntityTable[_Population] = EntityTable(models)

    def join_model(self, model_id: str, peers: _Peers) -> EntityTable[list[float]]:
        """The model's shared coverage table; ``peers`` now uses the shared population."""
        pop = self.populations.touch(model_id, lambda: peers.population)
        if pop is not peers.population:
            for who, share in peers.population.shares.items():
                if who not in pop.shares:  # a fresher value from another instance wins
                    pop.shares.insert(who, list(share))
            peers.population = pop
        return self.table(model_id)


class CoverageExtractionDetector(BatchedQueryDetector):
    """A principal exploring far more of the model's input space than its peers.

    Two signals, both judged against the model's other callers:

    **Breadth** (catches natural-data "knockoff" thieves, whose single queries
    look like anybody's): each query falls in a cell of a grid over
    ``grid_dims`` random orthonormal axes of the standardised input
    (``grid_levels`` bins per projection, bin edges at multiples of
    ``bin_width`` model spreads). Distinct cells per (principal, model) are
    counted with a K-minimum-values sketch of ``sketch_k`` hashes (exact up to
    ``sketch_k``, about 1/sqrt(k) relative error above): 8 bytes per hash,
    whatever the volume. Every ``peer_refresh`` batches, the model's peer
    summary is recomputed from the latest coverage of up to ``max_peers``
    principals. A principal is reported when its coverage exceeds ``min_cells``
    and ``peer_ratio`` times the peers' 90th percentile (needs ``min_peers``
    peers). In the pipeline the peers are the model's callers of every
    partition the process holds (a per-process summary shared by the
    detector's partition instances, see :class:`_SharedPeers`), not only those
    of the judged principal's partition. On natural data nearly every query
    is a new fine cell, so this is breadth of exploration at volume: a benign
    caller as busy as the thief covers as much (a limit no per-query signal
    can lift).

    **Novelty** (volume-robust; catches synthetic exploration such as uniform
    sweeps of the input box or Jacobian augmentation): a coarse grid over the
    first ``novelty_dims`` of those axes, cells ``novelty_width`` typical
    per-axis deviations wide and unbounded, and per model a fixed table of the
    cells its callers visited (``population_slots`` slots; a cell visited by two
    principals is kept for good). A query is *novel* when no other principal
    has visited its cell. Per principal, queries are counted in blocks of
    ``novelty_block``; the model keeps each principal's novel share in its
    latest unflagged block. Calibration: with p0 the ``novelty_quantile``
    quantile of the other principals' shares, a block is reported when its
    novel count reaches the binomial critical value at false-alarm probability
    ``novelty_alpha`` per block (a caller as novel as the 90th-percentile peer
    fires on about ``novelty_alpha`` of its blocks) and at least
    ``min_novel_share`` of the block. Nothing is judged before
    ``novelty_min_peers`` other principals have a share (with few peers the
    quantile is near their maximum: conservative); one value per principal and
    never the judged one's own, so one account cannot raise the bar (a Sybil
    group of more than a tenth of the callers could). Every block's share is
    recorded, flagged or not, and a block's novel count is recounted at its end
    against the others' visits up to then: after an upstream change every
    caller enters a region nobody visited, their shares rise together and so
    does the quantile they are judged by. And p0 is at least the other
    callers' pooled novel share during the block (when they sent at least as
    many queries meanwhile): a block as novel as everybody's at the same time
    is a change of the model's inputs (the drift detectors' finding), not one
    caller exploring; so an extraction that coincides with such a change waits
    until the others' traffic is familiar again. Limit: a few random axes
    see a sweep that leaves the population's region (the simulator's uniform
    queries over [-4, 4]^8: found after 64); on 64-pixel digits, uniform noise
    images project onto the natural digits' region and look familiar.

    Principals listed in ``exempt_principals`` (batch scoring services that
    legitimately sweep the input space) are not reported. The evidence gives the
    statistic, its threshold and the queries examined.

    >>> from detectors.testing import feed
    >>> rng = np.random.default_rng(2)
    >>> def q(i, who, x):
    ...     return InferenceEvent(ts=float(i), model_id="m", request_id=str(i),
    ...         principal=who, features=x.tolist(), prediction=0)
    >>> users = [q(i, f"u{i % 30}", rng.normal(size=8)) for i in range(3000)]
    >>> feed(CoverageExtractionDetector(), users)
    []
    >>> thief = [q(3000 + i, "thief", rng.normal(size=8)) for i in range(1500)]
    >>> [(f.entity.id, f.evidence["queries_examined"]) for f in
    ...  feed(CoverageExtractionDetector(), users + thief)]
    [('thief', 416)]
    """

    name: ClassVar[str] = "extraction.coverage"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "spaces", "peers", "rotations")
    kind: ClassVar[str] = "model_extraction"
    atlas: ClassVar[list[str]] = ATLAS_EXTRACTION

    def __init__(
        self,
        grid_dims: int = 10,
        grid_levels: int = 4,
        bin_width: float = 0.25,
        sketch_k: int = 512,
        min_cells: int = 400,
        peer_ratio: float = 3.0,
        min_peers: int = 10,
        max_peers: int = 4096,
        peer_refresh: int = 64,
        exempt_principals: tuple[str, ...] = (),
        novelty_dims: int = 4,
        novelty_width: float = 1.5,
        novelty_block: int = 64,
        novelty_alpha: float = 1e-6,
        novelty_quantile: float = 0.9,
        min_novel_share: float = 0.5,
        novelty_min_peers: int = 5,
        population_slots: int = 1 << 16,
        batch_size: int = 16,
        cooldown_seconds: float = 86_400.0,
        calibration_rows: int = 256,
        max_principals: int = 100_000,
        seed: int = 0,
    ) -> None:
        if grid_levels < 2 or grid_dims < 1 or sketch_k < 16 or min_cells < 1:
            raise ValueError("grid_levels >= 2, grid_dims >= 1, sketch_k >= 16, min_cells >= 1")
        if not 1 <= novelty_dims <= grid_dims or novelty_width <= 0 or novelty_block < 5:
            raise ValueError("novelty_dims in [1, grid_dims], novelty_width > 0, novelty_block > 4")
        if not 0 < novelty_alpha < 1 or not 0 < novelty_quantile < 1:
            raise ValueError("novelty_alpha and novelty_quantile in (0, 1)")
        self.novelty_dims = novelty_dims
        self.novelty_width = novelty_width
        self.novelty_block = novelty_block
        self.novelty_alpha = novelty_alpha
        self.novelty_quantile = novelty_quantile
        self.min_novel_share = min_novel_share
        self.novelty_min_peers = novelty_min_peers
        self.population_slots = 1 << max(int(population_slots - 1).bit_length(), 4)
        self.grid_dims = grid_dims
        self.grid_levels = grid_levels
        self.bin_width = bin_width
        self.sketch_k = sketch_k
        self.min_cells = min_cells
        self.peer_ratio = peer_ratio
        self.min_peers = min_peers
        self.max_peers = max_peers
        self.peer_refresh = peer_refresh
        self.exempt_principals = frozenset(exempt_principals)
        self._setup(
            batch_size=batch_size,
            cooldown_seconds=cooldown_seconds,
            max_principals=max_principals,
            calibration_rows=calibration_rows,
            max_dims=32,
            seed=seed,
        )
        self.peers: EntityTable[_Peers] = EntityTable(1024)
        self.place = (grid_levels ** np.arange(grid_dims)).astype(np.uint64)
        rng = np.random.default_rng(stable_seed(seed, "novelty"))
        self.novelty_mult = rng.integers(1, 2**62, size=novelty_dims, dtype=np.int64) | 1
        self.rotations: dict[tuple[int, int], np.ndarray] = {}

    def new_state(self) -> QueryState:
        return _CoverageState()

    def cells(self, space: ModelSpace, rows: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Hashed fine (breadth) and coarse (novelty) grid cells of ``rows``, one per row."""
        e = space.embed_stack(rows, self.batch_size)
        key = (e.shape[2], space.seed)
        rotation = self.rotations.get(key)
        if rotation is None:
            # A seeded random orthonormal map to grid_dims axes: every input
            # feature counts, and each axis keeps the embedding's scale.
            g = np.random.default_rng(space.seed).normal(size=(e.shape[2], e.shape[2]))
            rotation = np.linalg.qr(g)[0][:, : self.grid_dims].astype(np.float32)
            if len(self.rotations) >= 1024:
                self.rotations.clear()
            self.rotations[key] = rotation
        axes = np.matmul(e, rotation).reshape(len(rows), -1)
        z = axes / (self.bin_width * space.spread)
        half = self.grid_levels // 2
        bins = np.clip(np.floor(z) + half, 0, self.grid_levels - 1).astype(np.uint64)
        fine = _mix64((bins * self.place[: bins.shape[1]]).sum(axis=1))
        # Coarse cells in units of a typical per-axis deviation: two inputs of the
        # embedding are about ``spread`` apart, sqrt(2 * dims) deviations.
        axis_sd = space.spread / math.sqrt(2.0 * e.shape[2])
        n = min(self.novelty_dims, axes.shape[1])
        coarse = np.floor(axes[:, :n] / (self.novelty_width * axis_sd)).astype(np.int64)
        with np.errstate(over="ignore"):
            ids = (coarse * self.novelty_mult[:n]).sum(axis=1)
        return fine, _mix64(ids.view(np.uint64))

    def judge_run(self, run: list[Judgement]) -> list[list[Finding] | None]:
        out: list[list[Finding] | None] = [None] * len(run)
        bs = self.batch_size
        for at in by_model(run):
            fine, coarse = self.cells(run[at[0]].space, [r for i in at for r in run[i].rows])
            for b, i in enumerate(at):
                part = slice(b * bs, (b + 1) * bs)
                out[i] = self._judged_batch(run[i], fine[part], coarse[part])
        return out

    def _judged_batch(
        self, j: Judgement, hashes: np.ndarray, coarse: np.ndarray
    ) -> list[Finding] | None:
        st, event, source = j.st, j.event, j.source
        assert isinstance(st, _CoverageState)
        peers = self.peers.touch(
            event.model_id,
            lambda: _Peers(self.max_peers, _Population(self.population_slots, self.max_peers)),
        )
        population = self._population(event.model_id, peers)
        novel = self._novelty(st, peers.population, coarse, event)
        k = self.sketch_k
        st.kmv = kmv_update(st.kmv, hashes, k)
        peers.kmv = kmv_update(peers.kmv, hashes, 4 * k)
        st.examined += len(hashes)
        covered = distinct_estimate(st.kmv, k)
        peers.values.touch(event.principal, list)[:] = [covered]
        if population is not peers.values:
            population.touch(event.principal, list)[:] = [covered]
        peers.updates += 1
        if peers.updates % self.peer_refresh == 1 or math.isinf(peers.limit):
            self._refresh(peers, population)
        if event.principal in self.exempt_principals or self.quiet(st, event.ts):  # type: ignore[arg-type]
            return None
        if covered < peers.limit:
            return self._novelty_finding(st, event, source, novel) if novel else None
        model_cells = max(distinct_estimate(peers.kmv, 4 * k), covered)
        ratio = covered / max(peers.p90, 1.0)
        return self.finding(
            st,
            event,
            source,
            severity="high" if ratio >= 3 * self.peer_ratio else "medium",
            summary=(
                f"Principal's queries cover about {covered:.0f} input-space cells, "
                f"{ratio:.1f}x the 90th percentile of the model's other callers: "
                f"systematic exploration as in model extraction; review its volume and purpose."
            ),
            evidence={
                "statistic": "distinct input-space grid cells queried (KMV estimate)",
                "observed_cells": round(covered, 1),
                "peer_median_cells": round(peers.median, 1),
                "peer_p90_cells": round(peers.p90, 1),
                "threshold_cells": round(peers.limit, 1),
                "peers": len(population),
                "share_of_explored_space": round(covered / model_cells, 4),
                "queries_examined": st.examined,
                "cells_per_query": round(covered / st.examined, 4),
            },
        )

    def _novelty(
        self, st: _CoverageState, pop: _Population, coarse: np.ndarray, event: InferenceEvent
    ) -> tuple[int, int, float, int] | None:
        """Count the batch's novel queries; at a block's end, (novel, queries, p0,
        critical count) if the block is beyond its threshold, else None."""
        who = stable_seed(event.principal)
        totals = getattr(pop, "totals", None)
        if totals is None:
            totals = pop.totals = [0.0, 0.0]
        if st.block_n == 0:  # the model's counts when the block starts
            st.block_start = (totals[0], totals[1])
        fresh = pop.visit(coarse, who)
        totals[0] += fresh
        totals[1] += len(coarse)
        st.block_novel += fresh
        st.block_n += len(coarse)
        cells = getattr(st, "block_cells", None)
        if cells is None:
            cells = st.block_cells = []
        cells.append(coarse)
        if st.block_n < self.novelty_block:
            return None
        # Judged against the others' visits up to the block's end, not only those
        # before each query: when the model's inputs move (an upstream change),
        # its callers enter the new region together and share its cells.
        novel = min(st.block_novel, pop.still_novel(np.concatenate(cells), who))
        n = st.block_n
        # The other callers' queries during the block: how novel they were.
        start = getattr(st, "block_start", (totals[0], totals[1]))
        others_n = totals[1] - start[1] - n
        others = (totals[0] - start[0] - st.block_novel) / others_n if others_n >= n else 0.0
        st.block_novel = st.block_n = 0
        st.block_cells = []
        me = event.principal
        values = [v[0] for who, v in pop.shares.items() if who != me]
        found = None
        pop.p0 = math.nan
        if len(values) >= self.novelty_min_peers:
            # The peers' quantile, or their novel share meanwhile if higher: a
            # block is judged against the callers at the same time too.
            pop.p0 = max(float(np.quantile(values, self.novelty_quantile)), others)
        if not math.isnan(pop.p0):
            critical = max(
                binomial_critical_count(n, round(pop.p0 * 1000), self.novelty_alpha),
                math.ceil(self.min_novel_share * n),
            )
            if novel >= critical:
                found = novel, n, pop.p0, critical
        # Flagged blocks count too: when the model's inputs move, every caller's
        # share rises and the others' quantile with it (never one's own bar).
        pop.shares.touch(event.principal, list)[:] = [novel / n]
        return found

    def _novelty_finding(
        self,
        st: _CoverageState,
        event: InferenceEvent,
        source: Source,
        novel: tuple[int, int, float, int],
    ) -> list[Finding]:
        count, n, p0, critical = novel
        share = count / n
        return self.finding(
            st,
            event,
            source,
            severity="high" if share >= 0.8 else "medium",
            summary=(
                f"{count} of the principal's last {n} queries fell in regions of the input "
                f"space no other caller of the model has visited ({share:.0%}, against "
                f"{p0:.0%} for the model's callers): synthetic exploration as in model "
                f"extraction; review its purpose and rate-limit it."
            ),
            evidence={
                "statistic": "share of queries in coarse input-space cells no other caller visited",
                "observed_novel": count,
                "block_queries": n,
                "observed_share": round(share, 4),
                "peer_share_quantile": self.novelty_quantile,
                "baseline_share": round(p0, 4),
                "threshold_count": critical,
                "alpha": self.novelty_alpha,
                "queries_examined": st.examined,
            },
        )

    def _shared(self) -> _SharedPeers | None:
        pools = self.__dict__.get(_POOLS)
        shared = None if pools is None else pools.get(_SHARED_PEERS)
        return shared if isinstance(shared, _SharedPeers) else None

    def _population(self, model_id: str, peers: _Peers) -> EntityTable[list[float]]:
        """The model's callers' coverage: process-wide if shared, else this instance's
        (sharing also points ``peers.population`` to the process's population)."""
        shared = self._shared()
        return peers.values if shared is None else shared.join_model(model_id, peers)

    def share_caps(self, pools: MutableMapping[str, CapPool]) -> None:
        """Also join the process's per-model peer summary, adding this instance's peers."""
        super().share_caps(pools)
        shared = pools.get(_SHARED_PEERS)
        if not isinstance(shared, _SharedPeers):
            shared = pools[_SHARED_PEERS] = _SharedPeers(self.peers.capacity, self.max_peers)
        for model_id, peers in self.peers.items():
            population = shared.join_model(model_id, peers)
            for who, value in peers.values.items():
                if who not in population:  # a fresher value from another instance wins
                    population.insert(who, list(value))

    def _refresh(self, peers: _Peers, population: EntityTable[list[float]]) -> None:
        if len(population) < self.min_peers:
            peers.limit = math.inf
            return
        v = np.fromiter((x[0] for _, x in population.items()), dtype=np.float64)
        peers.median = float(np.median(v))
        peers.p90 = float(np.quantile(v, 0.9))
        peers.limit = max(float(self.min_cells), self.peer_ratio * peers.p90)
