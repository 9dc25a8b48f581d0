"""The model stage on a real broker: forwarders' batches landing in different orders give
the same model-scoped findings (issue #15, item 3), also across a restart that holds events.

Two forwarders (input partitions 0 and 1) copy a model's events to the
repartition topic, each copy with its ``mlwatchd.source`` header: what lands
there, and in which order, is written here directly, as the forwarders of a
clean run and of a run under faults (one forwarder late, in other batch
sizes) would have written it.
"""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

from daemon.runtime import SOURCE_HEADER
from detectors.findings import decode_finding
from tests.integration.kafka_helpers import (
    DaemonThread,
    committed,
    make_settings,
    read_all,
    unique,
    wait_for,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0
N = 3_000
_DRIFT = {"drift.features": {"params": {"reference_size": 1000, "window": 500, "step": 250}},
          "confidence.drop": {"params": {"reference_size": 1000, "window": 500, "step": 250}}}

Copy = tuple[int, int, bytes]  # source partition, source offset, value


def _copies() -> list[Copy]:
    """One model's events from two source partitions, in event-time order; inputs shift late."""
    rng = np.random.default_rng(11)
    offsets = [0, 0]
    out: list[Copy] = []
    for i in range(N):
        source = int(rng.integers(2))
        x = rng.normal(0.0, 1.0, 4) + (1.5 if i >= N // 2 else 0.0)
        out.append((source, offsets[source], orjson.dumps({
            "ts": T0 + i, "model_id": "fraud", "request_id": f"r{i}",
            "principal": f"caller-{i % 9}", "features": [round(float(v), 4) for v in x],
            "prediction": int(x[0] > 0),
            "confidence": round(0.95 - (0.3 if i >= N // 2 else 0.0) * float(rng.random()), 4)})))
        offsets[source] += 1
    return out


def _landing(copies: list[Copy], seed: int | None) -> list[Copy]:
    """The order the copies land in: each source's in its offset order, the two sources'
    batches (random sizes) interleaved at random; None: source 0 entirely, then source 1."""
    by_source = [[c for c in copies if c[0] == s] for s in (0, 1)]
    if seed is None:
        return by_source[0] + by_source[1]
    rng = random.Random(seed)
    batches = [[], []]  # type: list[list[list[Copy]]]
    for s, mine in enumerate(by_source):
        i = 0
        while i < len(mine):
            n = rng.randint(20, 400)
            batches[s].append(mine[i:i + n])
            i += n
    out: list[Copy] = []
    while batches[0] or batches[1]:
        s = rng.choice([k for k in (0, 1) if batches[k]])
        out += batches[s].pop(0)
    return out


def _forward(broker, rtopic: str, inputs: str, copies: list[Copy]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    for source, offset, value in copies:
        producer.send(rtopic, key=b"fraud", value=value, partition=0,
                      headers=[(SOURCE_HEADER, f"{inputs}:{source}:{offset}".encode())])
    producer.flush()
    producer.close()


def _settings(broker, tmp_path, **state):
    settings = make_settings(broker, partitions=2, detectors=_DRIFT, state={
        "dir": str(tmp_path / unique("state")), "model_routing": "repartition",
        "model_stage_max_wait_s": 3.0, **state})
    settings.topics.repartition = unique("ml.repartition")
    broker.create_topics([settings.topics.repartition], partitions=1)
    return settings


def _consumed(broker, settings, n: int) -> bool:
    got = committed(broker, settings.kafka.group_id)
    return got.get((settings.topics.repartition, 0), 0) >= n


def _run(broker, settings, landing: list[Copy]) -> list[str]:
    """Finding ids of a daemon whose model stage reads ``landing``, to the end."""
    _forward(broker, settings.topics.repartition, settings.topics.inference, landing)
    with DaemonThread(settings) as thread:
        assert wait_for(lambda: _consumed(broker, settings, len(landing)), 60)
        align = thread.daemon.align
        assert wait_for(lambda: align is None or not align.holding(), 30)
    return _finding_ids(broker, settings)


def _finding_ids(broker, settings) -> list[str]:
    found = [decode_finding(m.value) for m in
             read_all(broker, settings.topics.findings, expect=1, timeout_s=5, settle_s=1)]
    return sorted(f.finding_id for f in found if f.model_id == "fraud")


def test_batches_landing_in_different_orders_give_the_same_model_finding_ids(broker, tmp_path):
    copies = _copies()
    runs = [_run(broker, _settings(broker, tmp_path), _landing(copies, seed))
            for seed in (None, 1, 2)]
    assert runs[0], "the shift must be found for the comparison to mean something"
    assert runs[1] == runs[0] and runs[2] == runs[0]
    # Without alignment the model stage judges the landing order: other windows, other ids.
    unaligned = [_run(broker, _settings(broker, tmp_path, model_stage_max_buffered=0),
                      _landing(copies, seed)) for seed in (None, 1)]
    assert unaligned[0] != runs[0] or unaligned[1] != runs[0]


def test_events_held_at_a_stop_are_checkpointed_and_judged_after_the_restart(broker, tmp_path):
    copies = _copies()
    clean = _run(broker, _settings(broker, tmp_path), _landing(copies, 3))
    assert clean
    settings = _settings(broker, tmp_path, model_stage_max_wait_s=8.0)
    landing = _landing(copies, 4)
    half = len(landing) // 2
    _forward(broker, settings.topics.repartition, settings.topics.inference, landing[:half])
    with DaemonThread(settings) as first:
        assert wait_for(lambda: _consumed(broker, settings, half), 60)
        align = first.daemon.align
        assert align is not None and align.holding(), "the stop must find events held"
    # Committed past the held events: only the checkpoint still has them.
    assert committed(broker, settings.kafka.group_id)[(settings.topics.repartition, 0)] == half
    _forward(broker, settings.topics.repartition, settings.topics.inference, landing[half:])
    with DaemonThread(settings) as second:
        assert wait_for(lambda: _consumed(broker, settings, len(landing)), 60)
        align = second.daemon.align
        assert align is not None
        assert wait_for(lambda: not align.holding(), 30)
        assert second.daemon.metrics.repartition_duplicates._value.get() == 0  # type: ignore[attr-defined]
    assert _finding_ids(broker, settings) == clean
