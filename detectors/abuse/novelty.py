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
from typing import Any, Final, NamedTuple

import numpy as np

from detectors.abuse.population import CoverageState, Population
from detectors.abuse.space import stable_seed
from detectors.binomial import binomial_critical_count
from detectors.findings import Severity
from detectors.state_codec import state_type

__all__ = ["NovelBlock", "NoveltyRule"]

#: A block over the rule waits for the others at most while its principal sends
#: this many blocks more (a thief at night, when nobody else calls).
_MAX_WAIT: Final = 2
#: ... or this many, for a principal that had sent ``_ESTABLISHED`` blocks before.
_MAX_WAIT_ESTABLISHED: Final = 8
_ESTABLISHED: Final = 16


class NovelBlock(NamedTuple):
    """A block beyond its threshold: novel queries of ``n``, baseline share, critical count."""

    novel: int
    n: int
    p0: float
    critical: int


def _note_novel_batch(pop: Population, principal: str, at: float) -> None:
    """Record that ``principal`` sent a mostly novel batch at the model's query ``at``."""
    recent: dict[str, float] | None = getattr(pop, "novel_batches", None)
    if recent is None:
        recent = pop.novel_batches = {}
    recent.pop(principal, None)
    recent[principal] = at
    if len(recent) > 256:  # the most recent half (insertion order is time order)
        for who in list(recent)[:128]:
            del recent[who]


@state_type("abuse.coverage_waiting")
class _Waiting:
    """A block over the rule, waiting until the other callers have sent as many queries."""

    __slots__ = ("cells", "due", "n", "novel", "own_n", "own_novel", "start")

    def __init__(
        self, cells: np.ndarray, n: int, novel: int, start: tuple[float, ...], due: float
    ) -> None:
        self.cells = cells  # its coarse cells, recounted when it is judged
        self.n = n
        self.novel = novel
        self.start = start  # the model's (novel, queries) when it started
        self.own_n = n  # the principal's queries since it started
        self.own_novel = novel  # of which novel when sent
        self.due = due  # judged once the others have sent this many queries since it started


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
        """Count the batch's novel queries; a block beyond its threshold once it is
        judged (at its end, or later if it waits for the others), else None."""
        who = stable_seed(principal)
        totals = getattr(pop, "totals", None)
        if totals is None:
            totals = pop.totals = [0.0, 0.0]
        if st.block_n == 0:  # the model's counts (and its followers) when the block starts
            st.block_start = (totals[0], totals[1], float(pop.followed(who)))
        fresh = pop.visit(coarse, who)
        totals[0] += fresh
        totals[1] += len(coarse)
        if 2 * fresh >= len(coarse):
            _note_novel_batch(pop, principal, totals[1])
        st.block_novel += fresh
        st.block_n += len(coarse)
        cells = getattr(st, "block_cells", None)
        if cells is None:
            cells = st.block_cells = []
        cells.append(coarse)
        found = None
        waiting: _Waiting | None = getattr(st, "waiting", None)
        if waiting is not None:
            waiting.own_n += len(coarse)
            waiting.own_novel += fresh
            found = self._settle(st, pop, principal, waiting, totals)
        if st.block_n < self.block:
            return found
        # Judged against the others' visits up to the block's end, not only those
        # before each query: when the model's inputs move (an upstream change),
        # its callers enter the new region together and share its cells.
        block = np.concatenate(cells)
        novel = min(st.block_novel, pop.still_novel(block, who))
        n = st.block_n
        start = getattr(st, "block_start", (totals[0], totals[1]))
        block_novel = st.block_novel
        st.block_novel = st.block_n = 0
        st.block_cells = []
        # The other callers' queries during the block: how novel they were.
        others_n = totals[1] - start[1] - n
        others = (totals[0] - start[0] - block_novel) / others_n if others_n >= n else 0.0
        over = self._over(pop, principal, novel, n, others, start)
        if over is not None:
            # Judged once the others have sent as many queries again after it
            # (a heavy caller's busy hours are mostly its own; after an upstream
            # change it may be the first in the new region and the others
            # follow): against their visits, their novel share and their moves
            # since it started.
            if getattr(st, "waiting", None) is None:
                st.waiting = _Waiting(block, n, block_novel, start, max(others_n, 0.0) + n)
            over = None
        # Flagged blocks count too: when the model's inputs move, every caller's
        # share rises and the others' quantile with it (never one's own bar).
        pop.shares.touch(principal, list)[:] = [novel / n]
        return found or over

    def _over(
        self, pop: Population, principal: str, novel: int, n: int, others: float,
        start: tuple[float, ...],
    ) -> NovelBlock | None:
        """The block if ``novel`` of its ``n`` queries reach the critical count at the
        peers' quantile (or ``others``, the others' novel share meanwhile, if higher),
        and the others neither moved too nor followed it since ``start`` (the
        model's novel and query counts, and the principal's followers, then)."""
        since = start[1]
        who = stable_seed(principal)
        if len(start) > 2 and pop.followed(who) - start[2] >= max(2, math.ceil(0.1 * novel)):
            # Other callers entered its new cells meanwhile (a tenth of its novel
            # ones): it leads a move of the model's inputs, it is not exploring
            # alone (a second account following a thief would hide it too).
            return None
        values = [v[0] for who, v in pop.shares.items() if who != principal]
        pop.p0 = math.nan
        if len(values) < self.min_peers:
            return None
        # Several other callers sent mostly novel batches meanwhile: the model's
        # inputs moved (an upstream change, the drift detectors' finding); the
        # first caller into the new region is not exploring it. One account
        # cannot make this (a Sybil group of a tenth of the callers could).
        recent = getattr(pop, "novel_batches", None) or {}
        moved = sum(1 for who, at in recent.items() if who != principal and at > since)
        if moved >= max(2, math.ceil((1 - self.quantile) * len(values))):
            return None
        pop.p0 = max(float(np.quantile(values, self.quantile)), others)
        critical = max(
            binomial_critical_count(n, round(pop.p0 * 1000), self.alpha),
            math.ceil(self.min_share * n),
        )
        return NovelBlock(novel, n, pop.p0, critical) if novel >= critical else None

    def _settle(
        self, st: CoverageState, pop: Population, principal: str, waiting: _Waiting,
        totals: list[float],
    ) -> NovelBlock | None:
        """Judge a waiting block once the others have sent as many queries since it began."""
        others_n = totals[1] - waiting.start[1] - waiting.own_n
        # An established caller (a heavy one leading a move of the inputs while
        # the others are quiet) is waited for longer than a newcomer.
        wait = _MAX_WAIT_ESTABLISHED if st.examined >= _ESTABLISHED * self.block else _MAX_WAIT
        if others_n < waiting.due and waiting.own_n < wait * waiting.n:
            return None  # (nobody else calling for long: judged on what there is)
        st.waiting = None
        others = (totals[0] - waiting.start[0] - waiting.own_novel) / max(others_n, 1.0)
        if others_n < waiting.n:
            others = 0.0  # too few to tell
        novel = min(waiting.novel, pop.still_novel(waiting.cells, stable_seed(principal)))
        return self._over(pop, principal, novel, waiting.n, others, waiting.start)

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
