"""A simulated stream through the daemon on the real broker, scored as `eval --from-kafka` does."""

from __future__ import annotations

import pytest

from daemon.lab.evaluate import hits_from_kafka, score
from daemon.lab.simulate import encode, simulate
from daemon.lab.simulate import produce as produce_sim
from daemon.settings import load
from tests.integration.kafka_helpers import DaemonThread, committed, make_settings, wait_for

pytestmark = pytest.mark.integration


def test_simulated_stream_through_the_daemon(broker, tmp_path) -> None:
    events, _ = simulate(seed=5, days=3, scale=0.1)
    path = tmp_path / "sim.jsonl"
    path.write_bytes(b"".join(encode(e) + b"\n" for e in events))
    defaults = load(None).model_dump()["detectors"]  # the shipped detector set, as eval uses
    settings = make_settings(broker, partitions=3, detectors=defaults)
    t = settings.topics
    topics = {"inference": t.inference, "audit": t.audit, "access": t.access}
    produce_sim(events, broker.bootstrap, topics)
    group = settings.kafka.group_id
    with DaemonThread(settings):
        assert wait_for(lambda: sum(committed(broker, group).values()) == len(events),
                        timeout_s=120)
    infos, hits, unmatched = hits_from_kafka(settings, [path], idle_s=1.0)
    assert unmatched == 0 and hits
    card = score(infos, hits)
    by = {r.scenario.name: r for r in card.scenarios}
    assert len(by) == 10
    for name in ("query_flood", "self_grant", "model_tampering", "brute_force"):
        assert by[name].detected, name
    assert by["query_flood"].events_to_detect is not None
    assert by["query_flood"].events_to_detect < 500
    assert sum(c.total for c in card.detectors.values()) == len(hits)
