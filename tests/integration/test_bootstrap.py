"""Baseline bootstrap against the real broker: history learnt, not judged; live judged."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.integration.kafka_helpers import (
    DaemonThread,
    make_settings,
    produce,
    read_all,
    wait_for,
)

pytestmark = pytest.mark.integration

HOUR = 3600.0


def _read(ts: float, actor: str, nbytes: float, dataset: str = "dataset:sales") -> bytes:
    return orjson.dumps({
        "ts": round(ts, 3), "actor": actor, "action": "dataset.read", "resource": dataset,
        "outcome": "success", "bytes": int(nbytes), "records": int(nbytes // 400),
        "resource_type": "dataset",
    })


def _history(now: float) -> list[tuple[bytes, bytes]]:
    """Three days of office reads by 40 people; bob's old 8 GB export two days ago."""
    day0 = (now // 86400 - 3) * 86400
    out: list[tuple[bytes, bytes]] = []
    for day in range(3):
        for hour in (9, 11, 14):
            for p in range(40):
                who = "alice" if p == 0 else f"user-{p}"
                t = day0 + day * 86400 + hour * HOUR + p * 10
                out.append((who.encode(), _read(t, who, 1e7 * (1 + p % 4))))
            if day == 1 and hour == 14:
                out.append((b"bob", _read(day0 + day * 86400 + 15 * HOUR, "bob", 8e9)))
    out.sort(key=lambda kv: orjson.loads(kv[1])["ts"])
    return out


def _live_attack(now: float) -> list[tuple[bytes, bytes]]:
    """Alice reads 20 datasets of 500 MB now: 50x her usual hour."""
    return [(b"alice", _read(now + i, "alice", 5e8, f"dataset:crm-{i}")) for i in range(20)]


def _findings(broker, settings) -> list[dict]:
    return [orjson.loads(m.value) for m in read_all(broker, settings.topics.findings, 0,
                                                     timeout_s=3, settle_s=1)]


def _run(broker, history_s: float, reset: str = "earliest"):
    settings = make_settings(
        broker,
        bootstrap={"history_s": history_s},
        kafka={"auto_offset_reset": reset},
        detectors={"access.exfiltration": {}},
    )
    now = time.time()
    history = _history(now)
    produce(broker, settings.topics.audit, history)
    time.sleep(0.05)  # broker timestamps of the history strictly before the start
    with DaemonThread(settings) as d:
        assert wait_for(lambda: d.daemon.health.ready and bool(d.daemon.ownership.restored), 30)
        if reset == "earliest":
            assert wait_for(lambda: d.daemon.processed >= len(history), 60)
        else:
            time.sleep(1.0)  # joined at the end of the topic
        live = _live_attack(time.time())
        produce(broker, settings.topics.audit, live)
        done = len(history) + len(live) if reset == "earliest" else len(live)
        assert wait_for(lambda: d.daemon.processed >= done, 60)
        metrics = d.daemon.metrics.registry
    found = _findings(broker, settings)
    return found, metrics


def _by(found: list[dict], who: str) -> list[dict]:
    return [f for f in found if f["entity"]["id"] == who]


def test_bootstrap_learns_history_silently_then_catches_a_live_attack(broker):
    found, metrics = _run(broker, history_s=7 * 86400)
    assert _by(found, "bob") == [], "bob's export is history: learnt, not reported"
    alice = _by(found, "alice")
    assert len(alice) == 1 and alice[0]["detector"] == "access.exfiltration", found
    assert alice[0]["evidence"]["baseline_windows"] >= 9  # judged on her learnt history
    assert metrics.get_sample_value("mlwatchd_bootstrap_events_total") == 9 * 40 + 1
    assert metrics.get_sample_value("mlwatchd_bootstrap_findings_suppressed_total") >= 1


def test_without_bootstrap_history_is_judged_like_live_traffic(broker):
    found, _ = _run(broker, history_s=0)
    assert len(_by(found, "bob")) == 1, "history judged: bob's old export is a finding today"


def test_cold_start_at_the_end_of_the_topic_misses_the_attack_bootstrap_catches(broker):
    # Starting at the present with no history (auto_offset_reset latest, no
    # bootstrap) is the cold start: alice has no baseline and nobody has peers.
    found, _ = _run(broker, history_s=0, reset="latest")
    assert _by(found, "alice") == [], found


def test_restart_without_state_relearns_up_to_the_commit_and_judges_after_it(broker):
    # No state store: every start is a "first start" for the state. With a
    # committed offset, what precedes it was judged by the earlier run: it is
    # relearnt silently; what follows it is judged against that baseline.
    settings = make_settings(broker, bootstrap={"history_s": 7 * 86400},
                             detectors={"access.exfiltration": {}})
    now = time.time()
    history = _history(now)
    produce(broker, settings.topics.audit, history)
    time.sleep(0.05)
    with DaemonThread(settings) as d:
        assert wait_for(lambda: d.daemon.processed >= len(history), 60)
    assert _by(_findings(broker, settings), "bob") == []
    # While it is down, alice's attack arrives: after the commit, never judged yet.
    produce(broker, settings.topics.audit, _live_attack(time.time()))
    with DaemonThread(settings) as d:
        assert wait_for(lambda: d.daemon.processed >= len(history) + 20, 60)
        relearnt = d.daemon.metrics.registry.get_sample_value("mlwatchd_bootstrap_events_total")
    found = _findings(broker, settings)
    assert relearnt == len(history)
    alice = _by(found, "alice")
    assert len(alice) == 1 and alice[0]["evidence"]["baseline_windows"] >= 9, found
    assert _by(found, "bob") == []
