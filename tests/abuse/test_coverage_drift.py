"""``extraction.coverage`` novelty when the model's inputs move for every caller.

Issue #14: after an upstream change (a unit change, a new camera) all callers
send inputs to a region nobody visited before. Only unflagged blocks entered
the callers' novel shares and each query was judged against the others'
earlier visits, so the callers' quantile stayed at its pre-change level and
the first drifted blocks of several callers were reported (12 of the 14 false
findings of ``extraction.coverage`` on the tuning worlds were on drifted
traffic). Now a block's bar is also the other callers' novel share during
the block (they are novel at the same time), every block's share enters the
population (flagged or not; never the judged caller's own bar), and a block
is recounted at its end against the others' visits up to then.
"""

from __future__ import annotations

import numpy as np

from detectors.abuse.coverage import CoverageExtractionDetector
from detectors.abuse.population import Population
from detectors.events import InferenceEvent
from detectors.testing import feed


def _q(i: int, who: str, x: np.ndarray) -> InferenceEvent:
    return InferenceEvent(ts=float(i), model_id="m", request_id=str(i), principal=who,
                          features=x.tolist(), prediction=0)


def _traffic(callers: int, shift: float, widen: float) -> list[InferenceEvent]:
    """Interleaved callers; from event 4,000 on every caller's inputs move by
    ``shift`` on every feature and spread ``widen`` times as much."""
    rng = np.random.default_rng(4)
    return [_q(i, f"u{i % callers}", rng.normal(size=8) * (widen if i >= 4000 else 1.0)
               + (shift if i >= 4000 else 0.0)) for i in range(8000)]


def _with_sweep(events: list[InferenceEvent]) -> list[InferenceEvent]:
    rng = np.random.default_rng(5)
    return events + [_q(8000 + i, "thief", rng.uniform(-4, 4, size=8)) for i in range(300)]


def test_callers_moving_together_are_not_reported() -> None:
    # Against the peers' earlier shares only: 2 of the 10 callers reported.
    assert feed(CoverageExtractionDetector(), _traffic(10, 4.0, 3.0)) == []
    assert feed(CoverageExtractionDetector(), _traffic(8, 3.0, 2.0)) == []


def test_a_sweep_is_still_exploration() -> None:
    det = CoverageExtractionDetector()
    found = feed(det, _with_sweep(_traffic(10, 0.0, 1.0)))
    assert [f.entity.id for f in found] == ["thief"]
    assert "observed_novel" in found[0].evidence
    # Its flagged block's share entered the population (the other callers' bar).
    peers = det.peers.get("m")
    assert peers is not None
    share = peers.population.shares.get("thief")
    assert share is not None and share[0] >= 0.5


def test_a_block_is_recounted_against_the_others_later_visits() -> None:
    pop = Population(1024, 16)
    cells = np.arange(1, 11, dtype=np.uint64) * np.uint64(7919)
    assert pop.visit(cells, 1) == 10  # nobody else was there
    assert pop.still_novel(cells, 1) == 10
    pop.visit(cells[:3], 2)  # another caller arrives in three of those cells
    assert pop.still_novel(cells, 1) == 7
