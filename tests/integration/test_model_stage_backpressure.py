"""Model-stage backpressure on a real broker: a catch-up from a backlog stays aligned
(issue #15: the 200k soak force-released 300k of 400k model-stage events).

One daemon forwards and aligns. Input partition 1 holds a model's events five
times sparser in event time than partition 0, over the same hours: reading
both at the same pace, partition 1 runs ahead in event time and the aligner
holds its copies until partition 0 catches up. With a buffer smaller than
that lead it used to release them unaligned (``forced``); it now pauses
partition 1 (``consumer.pause``) and resumes it once partition 0 caught up.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer

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
DENSE, SPARSE = 10_000, 2_000
_DRIFT = {"drift.features": {"params": {"reference_size": 2000, "window": 1000, "step": 500}}}


def _event(rng: np.random.Generator, ts: float, i: int) -> bytes:
    x = rng.normal(0.0, 1.0, 4) + (1.5 if ts >= T0 + DENSE / 2 else 0.0)
    return orjson.dumps({"ts": ts, "model_id": "fraud", "request_id": f"r{i}",
                         "principal": f"caller-{i % 9}",
                         "features": [round(float(v), 4) for v in x],
                         "prediction": int(x[0] > 0)})


def _produce(broker, topic: str) -> None:
    rng = np.random.default_rng(5)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    for i in range(DENSE):  # one event a second
        producer.send(topic, key=b"a", value=_event(rng, T0 + i, i), partition=0)
    for j in range(SPARSE):  # one every five seconds, the same hours
        producer.send(topic, key=b"b", value=_event(rng, T0 + 5 * j + 0.5, DENSE + j),
                      partition=1)
    producer.flush()
    producer.close()


def _run(broker, tmp_path, max_buffered: int) -> tuple[list[str], dict[str, int], float]:
    settings = make_settings(
        broker, partitions=2, detectors=_DRIFT,
        kafka={"max_poll_records": 20, "max_partition_fetch_bytes": 4096},
        state={"dir": str(tmp_path / unique("state")), "model_routing": "repartition",
               "model_stage_max_wait_s": 3.0, "model_stage_max_buffered": max_buffered})
    settings.topics.repartition = unique("ml.repartition")
    broker.create_topics([settings.topics.repartition], partitions=1)
    _produce(broker, settings.topics.inference)

    def done() -> bool:
        got = committed(broker, settings.kafka.group_id)
        return got.get((settings.topics.repartition, 0), 0) >= DENSE + SPARSE

    with DaemonThread(settings) as thread:
        assert wait_for(done, 360)  # the roomy reference run is slow by design (~100 s idle)
        align = thread.daemon.align
        assert align is not None
        assert wait_for(lambda: not align.holding(), 30)
        stats = {"forced": int(align.forced._value.get()),  # type: ignore[attr-defined]
                 "late": int(align.late._value.get())}  # type: ignore[attr-defined]
        pauses = align.pauses._value.get()  # type: ignore[attr-defined]
    found = [decode_finding(m.value) for m in
             read_all(broker, settings.topics.findings, expect=1, timeout_s=5, settle_s=1)]
    return sorted(f.finding_id for f in found if f.model_id == "fraud"), stats, pauses


def test_a_source_ahead_in_event_time_is_paused_not_force_released(broker, tmp_path):
    ids, stats, pauses = _run(broker, tmp_path, max_buffered=1000)
    assert stats == {"forced": 0, "late": 0}
    assert pauses > 0, "partition 1 must have run ahead for the test to mean something"
    # The same finding ids as with room for the whole lead (nothing held back).
    roomy, roomy_stats, _ = _run(broker, tmp_path, max_buffered=100_000)
    assert roomy and roomy_stats == {"forced": 0, "late": 0}
    assert ids == roomy
