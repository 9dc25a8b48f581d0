"""``extraction.coverage``: a principal exploring more of the model's input space than its peers.

After Kesarwani et al. 2018: how much of the model's input space a principal
has explored (distinct cells of a random-projection grid, counted with a
bounded sketch, :mod:`detectors.abuse.sketch`), against the other principals
of the same model (:mod:`detectors.abuse.population`). This is the signal that
also catches a natural-data "knockoff" thief, whose single queries look like
anybody's but whose breadth does not; a fast thief is also caught by
``volume.peer_rate``.

Breadth is judged at matched volume (a principal's coverage after as many
queries as its peers sent, see the class doc): a heavy benign caller
legitimately covers more of the space than lighter ones. On the digits victim
of ``tests/abuse`` the natural-data knockoff thief, whose digits are as varied
as the benign callers', is therefore not a breadth finding (before, it was
found after 560-624 queries, against 40 lighter callers: the same signal that
reported every heavy benign caller); ``volume.peer_rate`` finds the fast one
(1 query/s) after 30-36.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import Any, ClassVar

import numpy as np

from detectors.abuse.common import (
    ATLAS_EXTRACTION,
    BatchedQueryDetector,
    Judgement,
    QueryState,
    by_model,
)
from detectors.abuse.grid import CoverageGrid
from detectors.abuse.novelty import NoveltyRule
from detectors.abuse.peers import join_pool, pooled
from detectors.abuse.population import (
    LEVEL_BASE,
    SHARED_PEERS,
    CoveragePeers,
    CoverageState,
    Population,
    SharedCoveragePeers,
)
from detectors.abuse.sketch import distinct_estimate, kmv_update
from detectors.abuse.space import ModelSpace
from detectors.findings import Finding
from detectors.state import CapPool, EntityTable

__all__ = ["CoverageExtractionDetector"]


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
    principals, and from their coverage at each volume level (after 64, 128,
    256, ... queries). A principal is reported when its coverage exceeds
    ``min_cells`` and ``peer_ratio`` times the peers' 90th percentile, and its
    coverage after ``64 * 2**k`` queries exceeded ``peer_ratio`` times the
    90th percentile of the callers that sent as many (k the highest level
    that ``min_peers`` callers reached): breadth at matched volume. A heavy
    benign caller legitimately covers more of the space than lighter ones
    (issue #14), so a natural-data thief whose inputs are as varied as the
    callers' is not told apart by breadth (``volume.peer_rate`` finds a fast
    one); a caller whose inputs spread far more widely than the others' at
    the same volume is. In the pipeline the peers are the model's callers of every
    partition the process holds (a per-process summary shared by the
    detector's partition instances, see :class:`SharedCoveragePeers`), not only those
    of the judged principal's partition.

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
    until the others' traffic is familiar again. A block over the rule is
    judged once the others have sent as many queries again after it (at most
    one block of a newcomer later: a thief at night is not waited for; seven
    of a caller that had sent 16 blocks before); it is not reported when at
    least two other callers (and a tenth of them) sent mostly novel batches
    since it began, or when other callers entered a tenth of its novel cells
    (cells it alone had visited) meanwhile: the first caller into a moved
    region, usually the busiest, leads the others there, while nobody follows
    an explorer (unless a second account of the thief does). Limit: a few random axes
    see a sweep that leaves the population's region (the simulator's uniform
    queries over [-4, 4]^8: found after 64); on 64-pixel digits, uniform noise
    images project onto the natural digits' region and look familiar.

    Principals listed in ``exempt_principals`` (batch scoring services that
    legitimately sweep the input space) are not reported. The evidence gives the
    statistic, its threshold and the queries examined.

    >>> from detectors.events import InferenceEvent
    >>> from detectors.testing import feed
    >>> rng = np.random.default_rng(2)
    >>> def q(i, who, x):
    ...     return InferenceEvent(ts=float(i), model_id="m", request_id=str(i),
    ...         principal=who, features=x.tolist(), prediction=0)
    >>> users = [q(i, f"u{i % 30}", rng.normal(size=8)) for i in range(3000)]
    >>> feed(CoverageExtractionDetector(), users)
    []
    >>> busy = [q(3000 + i, "busy", rng.normal(size=8)) for i in range(1500)]
    >>> feed(CoverageExtractionDetector(), users + busy)   # heavy, not exploring
    []
    >>> sweep = [q(3000 + i, "thief", rng.uniform(-6, 6, size=8)) for i in range(300)]
    >>> [(f.entity.id, f.evidence["queries_examined"]) for f in
    ...  feed(CoverageExtractionDetector(), users + sweep)]
    [('thief', 128)]
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
        self.grid = CoverageGrid(
            grid_dims, grid_levels, bin_width, novelty_dims, novelty_width, seed
        )
        self.novelty = NoveltyRule(
            novelty_block, novelty_alpha, novelty_quantile, min_novel_share, novelty_min_peers
        )
        self.population_slots = 1 << max(int(population_slots - 1).bit_length(), 4)
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
        self.peers: EntityTable[CoveragePeers] = EntityTable(1024)
        self.rotations: dict[tuple[int, int], np.ndarray] = {}

    def new_state(self) -> QueryState:
        return CoverageState()

    def cells(self, space: ModelSpace, rows: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Hashed fine (breadth) and coarse (novelty) grid cells of ``rows``, one per row."""
        return self.grid.cells(space, rows, self.batch_size, self.rotations)

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
        assert isinstance(st, CoverageState)
        peers = self.peers.touch(
            event.model_id,
            lambda: CoveragePeers(
                self.max_peers, Population(self.population_slots, self.max_peers)
            ),
        )
        population = self._population(event.model_id, peers)
        novel = self.novelty.judge(st, peers.population, coarse, event.principal)
        k = self.sketch_k
        st.kmv = kmv_update(st.kmv, hashes, k)
        peers.kmv = kmv_update(peers.kmv, hashes, 4 * k)
        st.examined += len(hashes)
        covered = distinct_estimate(st.kmv, k)
        levels: list[float] | None = getattr(st, "levels", None)
        if levels is None:
            levels = st.levels = []
        while st.examined >= LEVEL_BASE << len(levels):  # its coverage at each volume level
            levels.append(covered)
        peers.values.touch(event.principal, list)[:] = [covered, *levels]
        if population is not peers.values:
            population.touch(event.principal, list)[:] = [covered, *levels]
        peers.updates += 1
        if peers.updates % self.peer_refresh == 1 or math.isinf(peers.limit):
            peers.refresh(population, self.min_peers, self.min_cells, self.peer_ratio)
        if event.principal in self.exempt_principals or st.cooling_down(event.ts):  # type: ignore[arg-type]
            return None
        matched = peers.matched(levels, self.peer_ratio) if covered >= peers.limit else None
        if matched is None:
            if novel is None:
                return None
            severity, summary, evidence = self.novelty.report(novel, st.examined)
            return self.finding(st, event, source, severity=severity, summary=summary,
                                evidence=evidence)
        level, peers_at = matched
        severity, summary, evidence = peers.report(
            covered, st.examined, len(population), 4 * k, self.peer_ratio,
            (level, levels[level], peers_at),
        )
        return self.finding(st, event, source, severity=severity, summary=summary,
                            evidence=evidence)

    def _population(self, model_id: str, peers: CoveragePeers) -> EntityTable[list[float]]:
        """The model's callers' coverage: process-wide if shared, else this instance's
        (sharing also points ``peers.population`` to the process's population)."""
        shared = pooled(self, SHARED_PEERS, SharedCoveragePeers)
        return peers.values if shared is None else shared.join_model(model_id, peers)

    def share_caps(self, pools: MutableMapping[str, CapPool]) -> None:
        """Also join the process's per-model peer summary, adding this instance's peers."""
        super().share_caps(pools)
        shared = join_pool(
            pools, SHARED_PEERS, SharedCoveragePeers, self.peers.capacity, self.max_peers
        )
        for model_id, peers in self.peers.items():
            shared.join_model(model_id, peers)
            shared.merge(model_id, peers.values)  # a fresher value from another instance wins

    def stats(self) -> dict[str, float]:
        """Also the calibration sample sizes: the callers whose coverage sets the
        breadth limit, and those whose novel share sets the novelty baseline
        (the largest over the models)."""
        out = super().stats()
        shared = pooled(self, SHARED_PEERS, SharedCoveragePeers)
        breadth = novelty = calibrated = 0
        for model_id, peers in self.peers.items():
            values = (shared.values.get(model_id) if shared is not None else None) or peers.values
            breadth = max(breadth, len(values))
            novelty = max(novelty, len(peers.population.shares))
            calibrated += not math.isinf(peers.limit)
        out["calibrated_models"] = calibrated
        out["calibration_peers"] = breadth
        out["calibration_novelty_peers"] = novelty
        return out
