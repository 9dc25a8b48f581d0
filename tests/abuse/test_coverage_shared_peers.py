"""``extraction.coverage`` judges a caller against the model's callers of every partition.

Issue #14 (``make demo`` missed its model-extraction attack): the model's 11
callers were spread over 3 input partitions, so each partition instance of the
detector saw fewer than ``min_peers`` peers and never judged anybody. The
instances of one configured detector in a process now share a per-model peer
summary (through the pools the pipeline passes to ``share_caps``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detectors.abuse.coverage import CoverageExtractionDetector
from detectors.events import InferenceEvent
from detectors.findings import Finding
from detectors.state import CapPool
from detectors.testing import feed


def _q(i: int, who: str, x: np.ndarray) -> InferenceEvent:
    return InferenceEvent(ts=float(i), model_id="m", request_id=str(i), principal=who,
                          features=x.tolist(), prediction=0)


def _streams(sweep: bool = False) -> list[list[InferenceEvent]]:
    """12 benign callers, 4 per partition, each repeating its own few records, then a
    thief on partition 0: natural-data queries spread far wider than any caller's
    (breadth at matched volume), or (``sweep``) a uniform sweep of the input box
    (found by novelty)."""
    rng = np.random.default_rng(2)
    parts: list[list[InferenceEvent]] = [[], [], []]
    own = rng.normal(size=(12, 12, 8))  # each caller scores its own few records again
    for i in range(3000):
        who = i % 12
        parts[who % 3].append(_q(i, f"u{who}", own[who, rng.integers(12)]))
    if sweep:
        parts[0] += [_q(3000 + i, "thief", rng.uniform(-4, 4, size=8)) for i in range(300)]
    else:
        parts[0] += [_q(3000 + i, "thief", rng.normal(size=8)) for i in range(1500)]
    return parts


def _run(detectors: list[CoverageExtractionDetector], sweep: bool = False) -> list[Finding]:
    parts = _streams(sweep)
    found: list[Finding] = []
    for p in (1, 2, 0):  # the thief's partition last: its peers are all known by then
        found += feed(detectors[p], parts[p], partition=p)
    return found


def _shared() -> list[CoverageExtractionDetector]:
    pools: dict[str, CapPool] = {}  # as the pipeline passes one detector's instances
    detectors = [CoverageExtractionDetector() for _ in range(3)]
    for d in detectors:
        d.share_caps(pools)
    return detectors


def test_peers_of_other_partitions_count_for_breadth() -> None:
    found = _run(_shared())
    assert [f.entity.id for f in found] == ["thief"]
    assert found[0].evidence["peers"] == 13
    assert "observed_cells" in found[0].evidence


def test_peers_of_other_partitions_count_for_novelty() -> None:
    found = _run(_shared(), sweep=True)
    assert [f.entity.id for f in found] == ["thief"]
    assert "observed_novel" in found[0].evidence


def test_one_partition_alone_has_too_few_peers() -> None:
    # The same traffic to unshared instances: 4 peers on the thief's partition.
    assert _run([CoverageExtractionDetector() for _ in range(3)]) == []
    assert _run([CoverageExtractionDetector() for _ in range(3)], sweep=True) == []


def test_restore_counts_nobody_twice_and_snapshot_excludes_the_summary() -> None:
    pools: dict[str, CapPool] = {}
    ds = [CoverageExtractionDetector() for _ in range(3)]
    for d in ds:
        d.share_caps(pools)
    parts = _streams()
    for p in range(3):
        feed(ds[p], parts[p][:900], partition=p)
    summary: Any = pools["_coverage_peers"]
    before = {who: v[0] for who, v in summary.values.get("m").items()}
    assert len(before) == 12
    state = ds[0].snapshot()
    assert b"_coverage_peers" not in state
    ds[0].release_caps()
    again = CoverageExtractionDetector()
    again.share_caps(pools)
    again.restore(state)  # as the pipeline does after a rebalance
    assert {who: v[0] for who, v in summary.values.get("m").items()} == before
    restored = again.peers.get("m")
    assert restored is not None and restored.population is summary.populations.get("m")
    # A fresh process: the restored instance alone rebuilds its partition's peers.
    fresh: dict[str, CapPool] = {}
    alone = CoverageExtractionDetector()
    alone.share_caps(fresh)
    alone.restore(state)
    rebuilt: Any = fresh["_coverage_peers"]
    assert sorted(rebuilt.values.get("m")._items) == ["u0", "u3", "u6", "u9"]
    # ... and the model's population as it last saw it (all partitions' shares).
    assert len(rebuilt.populations.get("m").shares) == 12
