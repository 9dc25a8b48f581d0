"""``extraction.coverage`` novelty when the model's inputs move for every caller.

Issue #14: after an upstream change (a unit change, a new camera) all callers
send inputs to a region nobody visited before. Only unflagged blocks entered
the callers' novel shares, so the callers' quantile stayed at its pre-change
level and every caller's first drifted block was reported (12 of the 14 false
findings of ``extraction.coverage`` on the tuning worlds were on drifted
traffic). Now every block's share, flagged or not, enters the population
(never the judged caller's own bar), and a block is recounted at its end
against the others' visits up to then. The first callers into the new region
may still be reported (the drift detectors name the model).
"""

from __future__ import annotations

import numpy as np

from detectors.abuse.extraction import CoverageExtractionDetector
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


def test_callers_moving_together_are_not_reported_one_by_one() -> None:
    # Before: all 10 callers reported.
    found = {f.entity.id for f in feed(CoverageExtractionDetector(), _traffic(10, 4.0, 3.0))}
    assert len(found) <= 2


def test_a_block_is_judged_against_the_others_visits_up_to_its_end() -> None:
    # Counted only against visits before each query: 2 of the 8 callers reported.
    found = {f.entity.id for f in feed(CoverageExtractionDetector(), _traffic(8, 3.0, 2.0))}
    assert len(found) <= 1


def test_a_sweep_is_still_exploration() -> None:
    rng = np.random.default_rng(5)
    events = _traffic(10, 0.0, 1.0)
    events += [_q(8000 + i, "thief", rng.uniform(-4, 4, size=8)) for i in range(300)]
    found = feed(CoverageExtractionDetector(), events)
    assert [f.entity.id for f in found] == ["thief"]
    assert "observed_novel" in found[0].evidence
