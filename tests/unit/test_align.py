"""Event-time alignment of the model stage (daemon/align.py, issue #15 item 3).

The same events from three sources, fed in different interleavings and batch
splits, come out in one order; the real model-scoped detectors fed through
the aligner give the same finding ids; memory and waiting are bounded; a
snapshot/restore in the middle of the stream loses and repeats nothing.
"""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from daemon.align import EventTimeAligner, ModelStageAlignment
from detectors.events import Event, InferenceEvent
from detectors.findings import Source
from detectors.pipeline import DetectorSpec, Pipeline, StatePartition

T0 = 1_767_225_600.0
TOPIC = "ml.inference"
MODEL_DETECTORS = ("drift.features", "drift.prediction", "confidence.drop",
                   "performance.cbpe", "integrity.outliers")

Item = tuple[Event, Source]


def stream(n: int, seed: int = 0, sources: int = 3, drift_at: int | None = None) -> list[Item]:
    """``n`` inference events of one model spread over ``sources`` partitions in event-time
    order, each partition's offsets increasing; feature 0 shifts from ``drift_at``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    if drift_at is not None:
        x[drift_at:, 0] += 1.5
    p1 = 1 / (1 + np.exp(-x[:, 0]))
    where = rng.integers(0, sources, size=n)
    offsets = [100 * s for s in range(sources)]
    out: list[Item] = []
    for i in range(n):
        s = int(where[i])
        event = InferenceEvent(
            ts=T0 + i * 0.01 + float(rng.integers(0, 3)) * 0.001,  # a few equal times
            model_id="m", model_version="1", request_id=f"r{i}", principal=f"u{i % 7}",
            features=x[i].tolist(), prediction=int(p1[i] > 0.5),
            probabilities=[1 - float(p1[i]), float(p1[i])], confidence=float(max(p1[i], 1 - p1[i])),
            label=int(p1[i] > 0.5) if i % 10 == 0 else None)
        out.append((event, Source(TOPIC, s, offsets[s])))
        offsets[s] += 1
    return out


def per_source(items: list[Item]) -> dict[int, list[Item]]:
    out: dict[int, list[Item]] = {}
    for item in items:
        out.setdefault(item[1].partition, []).append(item)
    return out


def arrivals(items: list[Item], seed: int, max_batch: int = 300) -> list[list[Item]]:
    """The batches a model stage could receive: each source's events in offset order, cut
    in random batch sizes, the sources' batches interleaved at random."""
    rng = random.Random(seed)
    cut: dict[int, list[list[Item]]] = {}
    for s, events in per_source(items).items():
        i = 0
        while i < len(events):
            n = rng.randint(1, max_batch)
            cut.setdefault(s, []).append(events[i:i + n])
            i += n
    out: list[list[Item]] = []
    while cut:
        s = rng.choice(sorted(cut))
        out.append(cut[s].pop(0))
        if not cut[s]:
            del cut[s]
    return out


def aligned(batches: list[list[Item]], max_wait_s: float = 10.0, max_buffered: int = 10**6,
            step_s: float = 0.05) -> list[list[Item]]:
    """What an aligner releases batch by batch (a fast catch-up: no source goes quiet
    for ``max_wait_s``), then everything left once the sources have gone quiet."""
    aligner = EventTimeAligner(max_wait_s, max_buffered, now=0.0)
    now = 0.0
    out = []
    for batch in batches:
        aligner.push(batch, now)
        out.append(aligner.release(now))
        now += step_s
    out.append(aligner.release(now + max_wait_s))
    assert len(aligner) == 0
    return out


def flat(chunks: list[list[Item]]) -> list[Item]:
    return [item for chunk in chunks for item in chunk]


def keys(items: list[Item]) -> list[tuple[int, int]]:
    return [(s.partition, s.offset) for _, s in items]


def model_pipeline() -> Pipeline:
    specs = [DetectorSpec(name, {"reference_size": 1000, "window": 500, "step": 100})
             for name in MODEL_DETECTORS]
    return Pipeline(specs, repartitioned=True)


def finding_ids(chunks: list[list[Item]]) -> list[str]:
    pipeline = model_pipeline()
    found = []
    for chunk in chunks:
        if chunk:
            found += pipeline.process_many("inference", StatePartition.model(0), chunk)
    return [f.finding_id for f in found]


# -- order -----------------------------------------------------------------------------


def test_interleavings_and_batch_splits_release_the_identical_sequence():
    items = stream(3000, seed=1)
    orders = [keys(flat(aligned(arrivals(items, seed)))) for seed in range(6)]
    assert all(order == orders[0] for order in orders)
    # The merge order: event time, then source partition, then offset.
    expected = sorted(items, key=lambda it: (it[0].ts, it[1].partition, it[1].offset))
    assert orders[0] == keys(expected)
    # ... while the arrival orders themselves differ.
    assert len({tuple(keys(flat(arrivals(items, seed)))) for seed in range(6)}) == 6


def test_ties_on_event_time_break_by_source_partition_then_offset():
    def ev(ts: float) -> InferenceEvent:
        return InferenceEvent(ts=ts, model_id="m", request_id="r", principal="p",
                              features=[0.0], prediction=0)
    aligner = EventTimeAligner(1.0, 100, now=0.0)
    aligner.push([(ev(T0), Source(TOPIC, 2, 5)), (ev(T0), Source(TOPIC, 2, 6))], now=2.0)
    aligner.push([(ev(T0), Source(TOPIC, 1, 9)), (ev(T0 + 1), Source(TOPIC, 1, 10))], now=2.0)
    aligner.push([(ev(T0), Source(TOPIC, 0, 7, item=1)), (ev(T0), Source(TOPIC, 0, 7, item=0))],
                 now=2.0)  # items of one message: offset order is the source's order
    assert keys(aligner.release(now=9.0)) == [(0, 7), (0, 7), (1, 9), (2, 5), (2, 6), (1, 10)]


def test_model_scoped_detectors_give_identical_findings_through_the_aligner():
    items = stream(6000, seed=2, drift_at=3000)
    runs = [finding_ids(aligned(arrivals(items, seed))) for seed in range(4)]
    assert runs[0], "the drift must be found for the comparison to mean something"
    assert all(run == runs[0] for run in runs)
    # Without the aligner the detectors see the arrival order and decide otherwise.
    unaligned = [finding_ids(arrivals(items, seed)) for seed in range(4)]
    assert any(run != runs[0] for run in unaligned)


# -- bounds ----------------------------------------------------------------------------


def test_buffer_never_exceeds_its_cap_and_forced_releases_are_counted_in_order():
    items = per_source(stream(2000, seed=3, sources=2))
    aligner = EventTimeAligner(max_wait_s=60.0, max_buffered=100, now=0.0)
    now = 60.0
    aligner.push(items[1][:1], now)  # source 1 sends once, and is then waited for
    assert len(aligner.release(now)) == 1
    released: list[Item] = []
    for i in range(0, len(items[0]), 37):
        aligner.push(items[0][i:i + 37], now)
        released += aligner.release(now)
        assert len(aligner) <= 100
        now += 0.01
    assert aligner.forced == len(released) == len(items[0]) - 100
    assert keys(released) == keys(items[0][:len(released)])  # the oldest first
    stats = aligner.stats()
    assert stats["buffered"] == len(aligner) == 100 and stats["forced"] == aligner.forced


def test_idle_source_does_not_stall_release_beyond_max_wait():
    items = per_source(stream(600, seed=4))
    aligner = EventTimeAligner(max_wait_s=5.0, max_buffered=10**6, now=0.0)
    aligner.push(items[2][:3], now=10.0)  # source 2 sends a little, then nothing
    aligner.push(items[0], now=10.0)
    aligner.push(items[1], now=12.0)
    first = aligner.release(now=12.0)
    assert len(first) < 3 + len(items[0]) + len(items[1])  # waits for source 2
    assert aligner.release(now=14.9) == []
    rest = aligner.release(now=15.0)  # source 2 quiet for max_wait: not waited for
    assert rest and {s.partition for _, s in rest} == {0, 1}
    # ... until source 0 or 1 runs out: they were heard from more recently
    held = {s.partition for _, s in aligner.drain()}
    assert len(held) == 1
    assert len(aligner) == 0 and aligner.forced == 0


def test_warm_up_waits_for_sources_not_heard_from_yet():
    items = per_source(stream(300, seed=5))
    aligner = EventTimeAligner(max_wait_s=5.0, max_buffered=10**6, now=0.0)
    aligner.push(items[0], now=0.5)
    assert aligner.release(now=1.0) == []  # source 1 may still be starting
    aligner.push(items[1], now=2.0)
    aligner.push(items[2], now=2.0)
    out = aligner.release(now=5.0)
    assert keys(out[:50]) == keys(sorted([*items[0], *items[1], *items[2]],
                                         key=lambda it: it[0].ts)[:50])


def test_late_source_after_max_wait_is_released_and_counted_late():
    items = per_source(stream(300, seed=6, sources=2))
    aligner = EventTimeAligner(max_wait_s=1.0, max_buffered=10**6, now=0.0)
    aligner.push(items[0], now=2.0)
    aligner.push(items[1][:1], now=2.0)
    out = aligner.release(now=4.0)  # source 1 went quiet: source 0 goes on alone
    aligner.push(items[1][1:], now=4.5)
    out += aligner.release(now=6.0)
    assert len(out) == 300 and aligner.late > 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        EventTimeAligner(-1.0, 10, now=0.0)
    with pytest.raises(ValueError):
        EventTimeAligner(1.0, -1, now=0.0).restore({"format": 99}, now=0.0)


# -- state -----------------------------------------------------------------------------


def test_snapshot_restore_mid_stream_loses_and_repeats_nothing():
    items = stream(3000, seed=7)
    batches = arrivals(items, seed=7)
    whole = keys(flat(aligned(batches)))
    aligner = EventTimeAligner(10.0, 10**6, now=0.0)
    out: list[Item] = []
    now = 0.0
    for i, batch in enumerate(batches):
        if i == len(batches) // 2:
            state = json.loads(json.dumps(aligner.snapshot()))  # plain JSON
            assert len(state["buffered"]) == len(aligner) > 0
            state = pickle.loads(pickle.dumps(state))  # as the checkpoint stores it
            aligner = EventTimeAligner(10.0, 10**6, now=now)
            aligner.restore(state, now)
        aligner.push(batch, now)
        out += aligner.release(now)
        now += 0.05
    out += aligner.release(now + 10.0)
    assert keys(out) == whole
    restored = {(s.partition, s.offset): e for e, s in out}
    assert all(restored[(s.partition, s.offset)] == e for e, s in items)


def test_model_stage_alignment_releases_owned_partitions_and_keeps_metrics():
    items = stream(200, seed=8)
    stage = ModelStageAlignment(1.0, 10**6)
    m0, m1 = StatePartition.model(0), StatePartition.model(1)
    stage.push(m0, items[:100], now=0.0)
    stage.push(m1, items[100:], now=0.0)
    assert stage.holding()
    assert stage.release(5.0, owned=[m0]) == [(m0, sorted(items[:100],
                                                          key=lambda it: (it[0].ts,
                                                                          it[1].partition,
                                                                          it[1].offset)))]
    registry = CollectorRegistry()
    stage = ModelStageAlignment(1.0, 10**6, registry)
    stage.push(m0, items[:100], now=0.0)
    stage.push(m1, items[100:], now=0.0)

    def gauge() -> float | None:
        return registry.get_sample_value("mlwatchd_model_stage_buffered_events")

    assert gauge() == 200
    assert [len(events) for _, events in stage.release(5.0, owned=[m0])] == [100]
    assert gauge() == 100
    state = stage.snapshot(m1)
    stage.drop(m1)  # the partition went to another replica: it holds nothing here
    assert not stage.holding() and stage.snapshot(m1) == {} and gauge() == 0
    stage.restore(m1, state, now=10.0)
    assert gauge() == 100
    assert stage.release(10.5, owned=[m1]) == []  # warm-up after a restore
    assert [len(events) for _, events in stage.release(11.0, owned=[m1])] == [100]


# -- configuration ---------------------------------------------------------------------


def test_alignment_knobs_are_validated_with_one_line_per_problem(tmp_path):
    from daemon.settings import ConfigError, load

    good = tmp_path / "good.yaml"
    good.write_text("state: {model_stage_max_wait_s: 2.5, model_stage_max_buffered: 0}\n")
    state = load(good).state
    assert (state.model_stage_max_wait_s, state.model_stage_max_buffered) == (2.5, 0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("state: {model_stage_max_wait_s: -1, model_stage_max_buffered: lots}\n")
    with pytest.raises(ConfigError) as err:
        load(bad)
    problems = err.value.problems
    assert len(problems) == 2, problems
    assert any("state.model_stage_max_wait_s" in p for p in problems)
    assert any("state.model_stage_max_buffered" in p for p in problems)


def _ev(ts: float) -> InferenceEvent:
    return InferenceEvent(ts=ts, model_id="m", request_id=str(ts), principal="p",
                          features=[1.0], prediction=1)


def test_pressure_names_the_sources_ahead_from_half_the_cap_until_a_quarter():
    a = EventTimeAligner(max_wait_s=5.0, max_buffered=8, now=0.0)
    a.push([(_ev(0.5), Source(TOPIC, 0, 0)), (_ev(1.0), Source(TOPIC, 1, 0))], now=5.5)
    assert [e.ts for e, _ in a.release(now=5.5)] == [0.5]  # 0 empty again: wait for it
    assert a.pressure(now=5.5) == (set(), {(TOPIC, 0)})
    # Partition 1 runs ahead while partition 0 (awaited) sends nothing new.
    a.push([(_ev(2.0 + i), Source(TOPIC, 1, 1 + i)) for i in range(3)], now=6.5)
    assert a.release(now=6.5) == [] and len(a) == 4
    assert a.pressure(now=6.5) == ({(TOPIC, 1)}, {(TOPIC, 0)})
    # Pressed until down to a quarter of the cap (2), not just under half.
    a.push([(_ev(1.5), Source(TOPIC, 0, 1))], now=7.0)
    assert [e.ts for e, _ in a.release(now=7.0)] == [1.0, 1.5]
    assert len(a) == 3 and a.pressure(now=7.0)[0] == {(TOPIC, 1)}
    a.push([(_ev(2.5), Source(TOPIC, 0, 2))], now=7.0)
    assert [e.ts for e, _ in a.release(now=7.0)] == [2.0, 2.5]
    assert a.pressure(now=7.0) == (set(), {(TOPIC, 0)}) and a.forced == 0
    # No alignment (cap 0): never any pressure.
    off = EventTimeAligner(max_wait_s=5.0, max_buffered=0, now=0.0)
    off.push([(_ev(1.0), Source(TOPIC, 1, 0))], now=0.0)
    assert off.pressure(now=0.0)[0] == set()


def test_a_source_one_partition_waits_for_is_never_paused_for_another():
    m = ModelStageAlignment(max_wait_s=5.0, max_buffered=4, registry=CollectorRegistry())
    r0, r1 = StatePartition.model(0), StatePartition.model(1)
    # r0: source 1 ahead of source 0 (awaited); r1: waits for source 1.
    m.push(r0, [(_ev(0.0), Source(TOPIC, 0, 0))], now=0.0)
    m.push(r0, [(_ev(1.0 + i), Source(TOPIC, 1, i)) for i in range(3)], now=0.0)
    m.push(r1, [(_ev(0.0), Source(TOPIC, 2, 0))], now=0.0)
    assert m.ahead(now=0.5, owned=[r0]) == {(TOPIC, 0), (TOPIC, 1)}  # warm-up: all held
    m.release(now=6.0, owned=[r0, r1])
    m.push(r0, [(_ev(9.0 + i), Source(TOPIC, 1, 3 + i)) for i in range(2)], now=6.0)
    assert m.ahead(now=6.0, owned=[r0]) == {(TOPIC, 1)}
    m.push(r1, [(_ev(0.5), Source(TOPIC, 1, 9))], now=6.0)
    m.release(now=6.0, owned=[r1])  # r1 released source 1's event: now waits for it
    assert m.ahead(now=6.0, owned=[r0, r1]) == set()
