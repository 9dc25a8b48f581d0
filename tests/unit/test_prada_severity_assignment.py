"""``extraction.prada``'s severity does not depend on how partitions are spread over replicas.

Whether a principal is reported is judged against the model's callers of
every partition the process holds (a per-process peer table); which
partitions those are depends on the consumer group's assignment. In the 200k
soak (issue #15) a finding had the same id in the clean and the faulty run
but severity high in one and medium in the other, so a routing rule on
severity sent one to a log-only route and its chat alert was swallowed.
Severity is now judged against the finding's own partition's callers only.
"""

from __future__ import annotations

import numpy as np

from detectors.abuse.prada import PradaExtractionDetector
from detectors.events import InferenceEvent
from detectors.findings import Finding
from detectors.state import CapPool
from detectors.testing import feed


def _q(i: int, who: str, x: np.ndarray) -> InferenceEvent:
    return InferenceEvent(ts=float(i), model_id="m", request_id=str(i), principal=who,
                          features=x.tolist(), prediction=int(x[0] > 0))


def _thief_partition() -> list[InferenceEvent]:
    """Six natural callers, then a synthetic thief (two seeds, perturbed at many scales)."""
    rng = np.random.default_rng(1)
    natural = [_q(i, f"u{i % 6}", rng.normal(size=8)) for i in range(1800)]
    seeds = rng.normal(size=(2, 8))
    return natural + [_q(1800 + i, "thief", seeds[i % 2] + 10 ** rng.uniform(-4, 0.5)
                         * rng.normal(size=8)) for i in range(300)]


def _other_partition() -> list[InferenceEvent]:
    """Six benign callers whose queries are heavier-tailed (W a little lower)."""
    rng = np.random.default_rng(5)
    return [_q(i, f"b{i % 6}", rng.normal(size=8) * (4.0 if rng.random() < 0.04 else 1.0))
            for i in range(1800)]


def _thief_findings(with_other_partition: bool) -> list[Finding]:
    pools: dict[str, CapPool] = {}
    mine = PradaExtractionDetector()
    mine.share_caps(pools)
    if with_other_partition:  # this process also holds partition 1
        other = PradaExtractionDetector()
        other.share_caps(pools)
        assert feed(other, _other_partition(), partition=1) == []
    return [f for f in feed(mine, _thief_partition(), partition=0) if f.entity.id == "thief"]


def test_severity_is_the_same_whichever_partitions_the_process_holds() -> None:
    alone = _thief_findings(with_other_partition=False)
    together = _thief_findings(with_other_partition=True)
    assert len(alone) == len(together) == 1
    # The peer bar the finding was reported against does differ (the shared table)...
    assert together[0].evidence["threshold_w"] < alone[0].evidence["threshold_w"] - 0.1
    assert together[0].finding_id == alone[0].finding_id
    # ...but not its severity, which only this partition's callers decide.
    assert together[0].severity == alone[0].severity == "high"
