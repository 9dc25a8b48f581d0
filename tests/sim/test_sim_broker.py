"""A small simulated stream through the daemon on the real broker, then the scorecard."""

from __future__ import annotations

import orjson
import pytest

from daemon.evaluate import EventInfo, Hit, score
from daemon.settings import load
from daemon.simulate import produce as produce_sim
from daemon.simulate import simulate
from tests.integration.kafka_helpers import DaemonThread, make_settings, read_all, wait_for

pytestmark = pytest.mark.integration


def test_simulated_stream_through_the_daemon(broker) -> None:
    events, _ = simulate(seed=5, days=3, scale=0.1)
    defaults = load(None).model_dump()["detectors"]  # the shipped detector set, as eval uses
    settings = make_settings(broker, partitions=1, detectors=defaults)
    t = settings.topics
    topics = {"inference": t.inference, "audit": t.audit, "access": t.access}
    produce_sim(events, broker.bootstrap, topics)
    # One partition per topic: (topic, offset) names the event; its index in time order.
    position: dict[tuple[str, int], int] = {}
    seen: dict[str, int] = {}
    for i, e in enumerate(events):
        topic = topics[e.kind]
        position[(topic, seen.get(topic, 0))] = i
        seen[topic] = seen.get(topic, 0) + 1
    with DaemonThread(settings) as run:
        assert wait_for(lambda: run.daemon.processed >= len(events), timeout_s=120)
    findings = [orjson.loads(m.value) for m in read_all(broker, t.findings, expect=1)]
    hits = [Hit(max(position[(s["topic"], s["offset"])] for s in f["sources"]), f["detector"],
                f["kind"], f["entity"]["type"], f["entity"]["id"]) for f in findings]
    infos = [EventInfo(e.ts, e.scenario, e.body.get("model_id")) for e in events]
    card = score(infos, hits)
    by = {r.scenario.name: r for r in card.scenarios}
    assert len(by) == 10
    for name in ("query_flood", "self_grant", "model_tampering", "brute_force"):
        assert by[name].detected, name
    assert by["query_flood"].events_to_detect is not None
    assert by["query_flood"].events_to_detect < 500
    assert sum(c.total for c in card.detectors.values()) == len(findings)
