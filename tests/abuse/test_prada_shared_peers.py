"""``extraction.prada`` calibrates on the model's callers of every partition.

PRADA's W threshold comes from the model's other callers (median and MAD of
their log(1 - W)); until ``min_peers`` of them were tested it abstains (the
paper's fixed 0.9 with ``judge_uncalibrated``). In the daemon each partition
instance saw only its partition's callers, so a model whose callers are spread
over partitions stayed uncalibrated. The instances of one configured detector now share a
per-process, per-model table of principals' values
(:class:`detectors.abuse.peers.SharedPeerValues`, the mechanism
``extraction.coverage`` uses too).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detectors.abuse.prada import PradaExtractionDetector
from detectors.events import InferenceEvent
from detectors.findings import Finding
from detectors.state import CapPool
from detectors.testing import feed


def _q(i: int, who: str, x: np.ndarray) -> InferenceEvent:
    return InferenceEvent(ts=float(i), model_id="m", request_id=str(i), principal=who,
                          features=x.tolist(), prediction=int(x[0] > 0))


def _parts() -> list[list[InferenceEvent]]:
    """Six benign callers, two per partition; a synthetic thief on partition 0."""
    rng = np.random.default_rng(1)
    parts: list[list[InferenceEvent]] = [[], [], []]
    for i in range(3000):
        who = i % 6
        parts[who % 3].append(_q(i, f"u{who}", rng.normal(size=8)))
    seeds = rng.normal(size=(4, 8))
    parts[0] += [_q(3000 + i, "thief", seeds[i % 4] + 10 ** rng.uniform(-6, 0)
                    * rng.normal(size=8)) for i in range(300)]
    return parts


def _run(detectors: list[PradaExtractionDetector]) -> list[Finding]:
    parts = _parts()
    found: list[Finding] = []
    for p in (1, 2, 0):  # the thief's partition last
        found += feed(detectors[p], parts[p], partition=p)
    return found


def _shared(pools: dict[str, CapPool] | None = None) -> list[PradaExtractionDetector]:
    pools = {} if pools is None else pools
    detectors = [PradaExtractionDetector() for _ in range(3)]
    for d in detectors:
        d.share_caps(pools)
    return detectors


def test_the_thief_is_judged_against_callers_of_every_partition() -> None:
    found = _run(_shared())
    assert [f.entity.id for f in found] == ["thief"]
    assert found[0].evidence["calibrated"] and found[0].evidence["peers"] == 6


def test_one_partition_alone_stays_uncalibrated() -> None:
    # Alone, partition 0 has two callers besides the thief: no calibrated bar,
    # so PRADA abstains (the paper's fixed threshold would have fired).
    assert _run([PradaExtractionDetector() for _ in range(3)]) == []
    found = _run([PradaExtractionDetector(judge_uncalibrated=True) for _ in range(3)])
    assert [f.entity.id for f in found] == ["thief"]
    assert not found[0].evidence["calibrated"] and found[0].evidence["peers"] < 4


def test_snapshot_excludes_the_shared_table_and_restore_counts_nobody_twice() -> None:
    pools: dict[str, CapPool] = {}
    ds = _shared(pools)
    parts = _parts()
    for p in range(3):
        feed(ds[p], parts[p][:600], partition=p)
    shared: Any = pools["_prada_peers"]
    before = {who: v[0] for who, v in shared.table("m").items()}
    assert sorted(before) == [f"u{i}" for i in range(6)]
    state = ds[0].snapshot()
    assert b"_prada_peers" not in state
    ds[0].release_caps()
    again = PradaExtractionDetector()
    again.share_caps(pools)
    again.restore(state)
    assert {who: v[0] for who, v in shared.table("m").items()} == before
    # A fresh process: the restored instance brings back its own callers only.
    fresh: dict[str, CapPool] = {}
    alone = PradaExtractionDetector()
    alone.share_caps(fresh)
    alone.restore(state)
    assert sorted(fresh["_prada_peers"].table("m")) == ["u0", "u3"]  # type: ignore[attr-defined]
