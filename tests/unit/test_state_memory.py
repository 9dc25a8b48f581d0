"""Compact per-principal state (issue #16) and its benchmark, ``mlwatchd bench --state``."""

from __future__ import annotations

import re

import numpy as np
import pytest

from daemon.lab.bench_state import run_state_bench
from daemon.metrics import Metrics
from daemon.sections import StateSettings
from detectors.abuse.common import recent_seen
from detectors.abuse.knn import StatefulKnnProbingDetector
from detectors.abuse.prada import PradaExtractionDetector
from detectors.events import InferenceEvent
from detectors.findings import Source
from detectors.pipeline import DetectorSpec, Pipeline
from detectors.state import deep_size
from detectors.testing import feed


def test_deep_size_counts_numpy_buffers_and_views_once() -> None:
    a = np.zeros(1000, dtype=np.float32)
    assert deep_size(a) >= 4000
    assert deep_size([a, a, a[:10]]) < deep_size(a) + 1000  # views and repeats: once


def test_state_bench_prints_bytes_per_principal(capsys: pytest.CaptureFixture[str]) -> None:
    specs = [DetectorSpec("probing.stateful_knn"), DetectorSpec("volume.principal_rate")]
    assert run_state_bench(specs, principals=40, queries=40, features=16) == 0
    out = capsys.readouterr().out
    knn = re.search(r"probing\.stateful_knn\s+([\d,]+)\s+([\d,]+)", out)
    assert knn is not None, out
    pickled, memory = (int(v.replace(",", "")) for v in knn.groups())
    # 40 queries: one judged batch in the buffer (32 rows x 16 dims float32) at least
    assert pickled >= 32 * 16 * 4 and memory >= 32 * 16 * 4
    assert "RSS growth" in out and re.search(r"total\s+[\d,]+", out)


def _queries(n: int, who: str = "u", dims: int = 16, seed: int = 0) -> list[InferenceEvent]:
    rng = np.random.default_rng(seed)
    return [
        InferenceEvent(ts=float(i), model_id="m", request_id=str(i), principal=f"{who}{i % 7}",
                       features=rng.normal(size=dims).round(4).tolist(), prediction=i % 2)
        for i in range(n)
    ]


def test_pending_rows_are_compact_and_shared_by_detectors() -> None:
    prada, knn = PradaExtractionDetector(), StatefulKnnProbingDetector()
    events = _queries(256 + 7 * 10)  # calibration, then 10 pending rows per principal
    for start in range(0, len(events), 50):
        run = list(zip(events[start:start + 50], (Source("t", 0, i) for i in range(50)),
                       strict=False))
        prada.process_batch(run)
        knn.process_batch(run)
    a, b = prada.table.get("u3\x1fm"), knn.table.get("u3\x1fm")
    assert a is not None and b is not None and len(a.rows) == len(b.rows) > 0
    assert all(type(r) is np.ndarray and r.dtype == np.float64 for r in a.rows)
    assert all(x is y for x, y in zip(a.rows, b.rows, strict=True))  # one vector per event
    events_rows = {id(e.features) for e in events}
    assert not any(id(r) in events_rows for r in a.rows)  # the event's list is not kept


def test_recent_ring_answers_as_the_dict_did() -> None:
    rng = np.random.default_rng(3)
    ring, ref, memory = bytearray(), {}, 16
    for h in rng.integers(-40, 40, size=2000).tolist():
        h = h * (2**60 // 40)  # large and negative hashes too
        want = h in ref
        if not want:
            ref[h] = None
            if len(ref) > memory:
                del ref[next(iter(ref))]
        assert recent_seen(ring, h, memory) == want
    assert len(ring) == 8 + 8 * memory  # 8 bytes per hash, not a dict entry and an int


def test_a_checkpointed_dict_of_recent_hashes_still_skips_repeats() -> None:
    knn = StatefulKnnProbingDetector()
    events = _queries(256 + 1)
    feed(knn, events)
    st = knn.table.get(f"{events[-1].principal}\x1fm")
    assert st is not None
    st.recent = {hash(tuple(events[-1].features)): None}  # as checkpoints before the ring
    again = events[-1].__class__(**{**{f: getattr(events[-1], f)
                                        for f in events[-1].__struct_fields__},
                                     "request_id": "again"})
    before = knn.repeats_skipped
    feed(knn, [again])
    assert knn.repeats_skipped == before + 1 and type(st.recent) is bytearray


def test_state_budget_caps_all_detectors_and_counts_evictions() -> None:
    specs = [DetectorSpec("probing.stateful_knn"), DetectorSpec("volume.principal_rate")]
    budget = 2 * 2**20
    capped, free = Pipeline(specs, max_state_bytes=budget), Pipeline(specs)
    events = [e for k in range(30) for e in _queries(200, who=f"w{k}-", seed=k)]
    for i, e in enumerate(events):
        e.principal = f"p{i}"  # a flood: every event from a new principal
    for p in (capped, free):
        for start in range(0, len(events), 2000):
            run = [(e, Source("t", 0, start + n)) for n, e in enumerate(events[start:start + 2000])]
            p.process_many("inference", 0, run)
    held = {d.name: len(d.table) for _, d in capped.detectors()}
    assert held["probing.stateful_knn"] < 6000 and held["volume.principal_rate"] < 6000
    tables = [d.table for _, d in capped.detectors()]
    assert deep_size(tables) < 1.25 * budget
    assert capped.state_evictions()["probing.stateful_knn"] > 0
    assert free.state_evictions() == {"probing.stateful_knn": 0, "volume.principal_rate": 0}
    assert {d.name: len(d.table) for _, d in free.detectors()} == {
        "probing.stateful_knn": 6000 - 256, "volume.principal_rate": 6000}

    metrics = Metrics()
    metrics.count_evictions(capped.state_evictions())
    metrics.count_evictions(capped.state_evictions())  # a tally, not increments
    assert b'mlwatchd_state_evictions_total{detector="probing.stateful_knn"} %d' % (
        capped.state_evictions()["probing.stateful_knn"]) in metrics.render().replace(b".0", b"")


def test_max_state_mb_setting() -> None:
    assert StateSettings().max_state_mb is None
    assert StateSettings(max_state_mb=512).max_state_mb == 512
    with pytest.raises(ValueError):
        StateSettings(max_state_mb=0)


def test_prada_state_grows_with_what_the_principal_sent() -> None:
    prada = PradaExtractionDetector()
    feed(prada, _queries(256 + 7 * 64))  # 64 queries per principal: two batches judged
    st = prada.table.get("u3\x1fm")
    assert st is not None and 0 < st.n_dists < prada.max_distances
    assert st.n_dists <= len(st.dists) < prada.max_distances  # not 500 floats up front
    assert min(st.growing, prada.max_growing) <= len(st.g_rows) < 32


def test_the_daemon_gives_its_pipeline_the_configured_budget() -> None:
    from daemon.runtime import Daemon
    from daemon.settings import Settings

    assert Daemon(Settings(detectors={})).pipeline.budget is None
    capped = Daemon(Settings(detectors={}, state={"max_state_mb": 256}))
    assert capped.pipeline.budget is not None
    assert capped.pipeline.budget.max_bytes == 256 * 2**20


def test_a_budget_gives_room_back_when_entries_shrink() -> None:
    from detectors.state import CapPool, EntityTable, StateBudget

    pool = CapPool(1000)
    table: EntityTable[np.ndarray] = EntityTable(1000, pool)
    for i in range(200):
        table.insert(str(i), np.zeros(1000))  # ~8 KB each
    budget = StateBudget(400_000)
    budget.rebalance([pool])
    assert 30 < pool.capacity < 60
    for i in range(200, 400):
        table.insert(str(i), np.zeros(10))  # small entries replace them
    budget.rebalance([pool])
    assert pool.capacity > 500  # the cap rises again, not only ratchets down
