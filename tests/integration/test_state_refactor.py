"""A restart across a refactor and a state-version bump (issue #13 item 4), real broker.

Between two daemons the per-principal state class of ``volume.principal_rate``
is renamed and moved to another module, and ``volume.peer_rate`` bumps its
state version: the first restores (the flood after the restart is caught),
the second relearns and is counted in
``mlwatchd_state_restore_failed_total``; the daemon keeps running.
"""

from __future__ import annotations

import sys
import types

import pytest

import detectors.abuse.volume as volume_module
from daemon.metrics import Metrics
from detectors.abuse.volume import PeerRateDetector
from detectors.findings import decode_finding
from tests.integration.kafka_helpers import (
    DaemonThread,
    committed,
    inference,
    make_settings,
    produce,
    read_all,
    wait_for,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0


def test_a_restart_after_renaming_a_state_class_restores_and_a_version_bump_relearns(
        broker, tmp_path, monkeypatch):
    settings = make_settings(broker, state={"dir": str(tmp_path / "state")}, detectors={
        "volume.peer_rate": {"params": {}}})
    history = [(who.encode(), inference(T0 + i * 10, who, i))
               for i in range(360) for who in ("alice", "mallory")][:720]
    group, topic = settings.kafka.group_id, settings.topics.inference
    produce(broker, topic, history)
    with DaemonThread(settings):
        assert wait_for(lambda: committed(broker, group).get((topic, 0), 0) == len(history))

    # the refactor: _Rate becomes detectors.abuse.rates.PrincipalRate
    cls = volume_module._Rate
    moved = types.ModuleType("detectors.abuse.rates")
    moved.PrincipalRate = cls  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "detectors.abuse.rates", moved)
    monkeypatch.delattr(volume_module, "_Rate")
    monkeypatch.setattr(volume_module, "PrincipalRate", cls, raising=False)
    names = (cls.__module__, cls.__qualname__, cls.__name__)
    cls.__module__, cls.__qualname__, cls.__name__ = "detectors.abuse.rates", "PrincipalRate", \
        "PrincipalRate"
    monkeypatch.setattr(PeerRateDetector, "state_version", PeerRateDetector.state_version + 1)
    try:
        flood = [(b"mallory", inference(T0 + 3700 + i * 0.1, "mallory", 10_000 + i))
                 for i in range(300)]
        produce(broker, topic, flood)
        metrics = Metrics()
        with DaemonThread(settings, metrics=metrics) as run:
            assert wait_for(lambda: committed(broker, group).get((topic, 0), 0)
                            == len(history) + len(flood))
            assert run.exit_code is None, "the daemon keeps running"
    finally:
        cls.__module__, cls.__qualname__, cls.__name__ = names
    found = [decode_finding(m.value) for m in
             read_all(broker, settings.topics.findings, expect=1, timeout_s=5)]
    assert [(f.detector, f.entity.id) for f in found] == [("volume.principal_rate", "mallory")]
    failed = metrics.state_restore_failed.labels("volume.peer_rate", "version")._value.get()
    assert failed >= 1
    assert metrics.state_restore_failed.labels("volume.principal_rate", "version") \
        ._value.get() == 0
