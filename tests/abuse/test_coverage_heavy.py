"""``extraction.coverage`` on heavy benign callers (issue #14).

A heavy benign caller legitimately covers much of the model's input space:
the breadth rule compared its coverage with the 90th percentile of lighter
callers' and reported it (held-out world 1000002: a caller sending 10,000
natural queries a day, 400 cells against the others' 98). Breadth is now
compared at matched volume: a principal's coverage after ``64 * 2**k``
queries against the callers' coverage after as many (the highest such level
that ``min_peers`` callers reached). And after an upstream change the first
caller into the new region is usually the busiest: a novelty block judged
while the others had sent fewer queries waits until they have, and is not
reported when several other callers sent mostly novel batches meanwhile
(tuning worlds 9 and 10).
"""

from __future__ import annotations

import numpy as np

from detectors.abuse.coverage import CoverageExtractionDetector
from detectors.events import InferenceEvent
from detectors.testing import feed


def _q(i: int, who: str, x: np.ndarray) -> InferenceEvent:
    return InferenceEvent(ts=float(i), model_id="m", request_id=str(i), principal=who,
                          features=x.tolist(), prediction=0)


def test_a_heavy_caller_of_natural_inputs_is_not_reported() -> None:
    rng = np.random.default_rng(2)
    users = [_q(i, f"u{i % 30}", rng.normal(size=8)) for i in range(3000)]
    busy = [_q(3000 + i, "busy", rng.normal(size=8)) for i in range(1500)]
    # Against the lighter callers' coverage it was 3x their 90th percentile at 416.
    assert feed(CoverageExtractionDetector(), users + busy) == []


def test_breadth_beyond_the_peers_at_the_same_volume_is_reported() -> None:
    rng = np.random.default_rng(3)
    # Each caller scores its own few records again and again (few cells each).
    own = {f"u{c}": rng.normal(size=(12, 8)) for c in range(20)}
    users = [_q(i, f"u{i % 20}", own[f"u{i % 20}"][rng.integers(12)]) for i in range(6000)]
    spread = [_q(6000 + i, "spread", rng.normal(size=8)) for i in range(1200)]
    found = feed(CoverageExtractionDetector(), users + spread)
    assert [f.entity.id for f in found] == ["spread"]
    ev = found[0].evidence
    assert ev["matched_observed_cells"] > 3 * ev["matched_peer_p90_cells"]
    assert ev["matched_queries"] <= 256 < ev["queries_examined"]


def _drifting(light: int, every: int, n: int, at: int) -> list[InferenceEvent]:
    """A heavy caller sending all but one query in ``every``; from event ``at`` on
    every caller's inputs move by 3 on every feature and spread twice as much."""
    rng = np.random.default_rng(4)
    out = []
    for i in range(n):
        who = f"u{(i // every) % light}" if i % every == 0 else "big"
        moved = i >= at
        out.append(_q(i, who, rng.normal(size=8) * (2.0 if moved else 1.0) + (3.0 * moved)))
    return out


def test_the_first_caller_into_a_moved_region_is_not_exploring() -> None:
    # Breadth off: this is the novelty rule. Before: "big" reported at 2,944.
    # (A limit: with ten light callers here "big" is still reported once; the
    # others' batches land in the cells it visited first and look familiar.)
    assert feed(CoverageExtractionDetector(min_cells=10**6), _drifting(8, 2, 12000, 6000)) == []


def test_followers_are_counted_once_per_cell_entered() -> None:
    from detectors.abuse.population import Population

    pop = Population(1024, 16)
    cells = np.arange(1, 11, dtype=np.uint64) * np.uint64(7919)
    pop.visit(cells, 1)
    assert pop.followed(1) == 0
    pop.visit(cells[:4], 2)  # another caller enters four of its cells
    pop.visit(cells[:4], 3)  # shared already: no longer the leader's alone
    assert (pop.followed(1), pop.followed(2)) == (4, 0)
