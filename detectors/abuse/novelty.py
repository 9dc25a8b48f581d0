"""``extraction.coverage``'s novelty rule: a block of queries no other caller went near.

A query is *novel* when no other principal of the model has visited its
coarse cell (:class:`~detectors.abuse.population.Population`). Per principal,
queries are counted in blocks; a block is reported when its novel count
reaches the binomial critical value (:mod:`detectors.binomial`) at the other
callers' typical novel share (see
:class:`~detectors.abuse.coverage.CoverageExtractionDetector` for the
calibration and its limits).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from detectors.abuse.population import CoverageState, Population
from detectors.abuse.space import stable_seed
from detectors.binomial import binomial_critical_count
from detectors.findings import Severity

__all__ = ["NovelBlock", "NoveltyRule"]


class NovelBlock(NamedTuple):
    """A block beyond its threshold: novel queries of ``n``, baseline share, critical count."""

    novel: int
    n: int
    p0: float
    critical: int


class NoveltyRule:
    """Block size, false-alarm budget and peer quantile of the novelty signal (config)."""

    __slots__ = ("alpha", "block", "min_peers", "min_share", "quantile")

    def __init__(
        self, block: int, alpha: float, quantile: float, min_share: float, min_peers: int
    ) -> None:
        self.block = block
        self.alpha = alpha
        self.quantile = quantile
        self.min_share = min_share
        self.min_peers = min_peers

    def judge(
        self, st: CoverageState, pop: Population, coarse: np.ndarray, principal: str
    ) -> NovelBlock | None:
        """Count the batch's novel queries; at a block's end, the block if it is
        beyond its threshold, else None."""
        who = stable_seed(principal)
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
        if st.block_n < self.block:
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
        values = [v[0] for who, v in pop.shares.items() if who != principal]
        found = None
        pop.p0 = math.nan
        if len(values) >= self.min_peers:
            # The peers' quantile, or their novel share meanwhile if higher: a
            # block is judged against the callers at the same time too.
            pop.p0 = max(float(np.quantile(values, self.quantile)), others)
        if not math.isnan(pop.p0):
            critical = max(
                binomial_critical_count(n, round(pop.p0 * 1000), self.alpha),
                math.ceil(self.min_share * n),
            )
            if novel >= critical:
                found = NovelBlock(novel, n, pop.p0, critical)
        # Flagged blocks count too: when the model's inputs move, every caller's
        # share rises and the others' quantile with it (never one's own bar).
        pop.shares.touch(principal, list)[:] = [novel / n]
        return found

    def report(self, block: NovelBlock, examined: int) -> tuple[Severity, str, dict[str, Any]]:
        """Severity, summary and evidence of a finding about ``block``."""
        count, n, p0, critical = block
        share = count / n
        summary = (
            f"{count} of the principal's last {n} queries fell in regions of the input "
            f"space no other caller of the model has visited ({share:.0%}, against "
            f"{p0:.0%} for the model's callers): synthetic exploration as in model "
            f"extraction; review its purpose and rate-limit it."
        )
        evidence = {
            "statistic": "share of queries in coarse input-space cells no other caller visited",
            "observed_novel": count,
            "block_queries": n,
            "observed_share": round(share, 4),
            "peer_share_quantile": self.quantile,
            "baseline_share": round(p0, 4),
            "threshold_count": critical,
            "alpha": self.alpha,
            "queries_examined": examined,
        }
        return ("high" if share >= 0.8 else "medium"), summary, evidence
