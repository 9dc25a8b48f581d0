"""Detector state survives restarts and crashes, consistent with committed offsets."""

from __future__ import annotations

import signal
import subprocess
import sys

import orjson
import pytest

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
from tests.integration.test_process import _env

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0


def _history(n_minutes=60):
    return [(who.encode(), inference(T0 + i * 10, who, i)) for i in range(n_minutes * 6)
            for who in ("alice", "mallory")][: n_minutes * 12]


def _flood(start_s):
    return [(b"mallory", inference(T0 + start_s + i * 0.1, "mallory", 10_000 + i))
            for i in range(300)]


@pytest.mark.parametrize("with_state", [True, False], ids=["checkpointed", "no-state-dir"])
def test_baseline_learnt_before_a_restart_is_used_after_it(broker, tmp_path, with_state,
                                                           client):
    state = {"dir": str(tmp_path / "state")} if with_state else {}
    settings = make_settings(broker, state=state, kafka={"client": client})
    history = _history(60)  # an hour of both principals at 6 per minute
    produce(broker, settings.topics.inference, history)
    with DaemonThread(settings):
        assert wait_for(lambda: committed(broker, settings.kafka.group_id)
                        .get((settings.topics.inference, 0), 0) == len(history))
    flood = _flood(3700)
    produce(broker, settings.topics.inference, flood)
    total = len(history) + len(flood)
    group, topic = settings.kafka.group_id, settings.topics.inference
    with DaemonThread(settings):  # a new daemon: only the checkpoint carries state
        # committed offsets, not a count: a restore may replay some history first
        assert wait_for(lambda: committed(broker, group).get((topic, 0), 0) == total)
    found = [decode_finding(m.value) for m in
             read_all(broker, settings.topics.findings, expect=1, timeout_s=5)]
    if with_state:
        assert [f.entity.id for f in found] == ["mallory"], "baseline restored: flood caught"
    else:
        assert found == [], "without state the restarted daemon is still warming up"


def _finding_ids(broker, settings, expect):
    return sorted(decode_finding(m.value).finding_id
                  for m in read_all(broker, settings.topics.findings, expect=expect))


@pytest.mark.parametrize("store", ["local", "kafka"])
def test_kill_9_with_checkpoints_gives_the_same_finding_ids_as_a_clean_run(
        broker, tmp_path, store):
    """``kafka``: no local disk at all; the state comes back from the state topic."""
    # Many principals, several floods: findings depend on per-principal baselines.
    stream = []
    for minute in range(120):
        for p in range(20):
            stream.append((f"p{p}".encode(), inference(T0 + minute * 60 + p, f"p{p}", minute)))
        if minute % 20 == 19:
            victim = f"p{minute // 20}"
            stream += [(victim.encode(), inference(T0 + minute * 60 + 30 + i * 0.1, victim,
                                                   100_000 + minute * 1000 + i))
                       for i in range(200)]
    clean = make_settings(broker, partitions=3)
    produce(broker, clean.topics.inference, stream)
    with DaemonThread(clean) as run:
        assert wait_for(lambda: run.daemon.processed >= len(stream), 120)
    expected = _finding_ids(broker, clean, expect=1)
    assert len(expected) >= 4

    crashy = make_settings(broker, partitions=3)
    env = _env(crashy)
    config = tmp_path / "detectors.yaml"  # the same detectors as the clean run
    config.write_text(orjson.dumps({"detectors": {
        name: {"params": cfg.params} for name, cfg in crashy.detectors.items()}}).decode())
    cmd = [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)]
    if store == "local":
        env["MLWATCHD_STATE__DIR"] = str(tmp_path / "state")
    else:
        env.update({"MLWATCHD_STATE__STORE": "kafka",
                    "MLWATCHD_STATE__SIGNING_KEY": "0123456789abcdef-state-key",
                    "MLWATCHD_STATE__TOPIC": f"{crashy.topics.inference}.state"})
    env["MLWATCHD_STATE__CHECKPOINT_EVERY_S"] = "0.3"
    env["MLWATCHD_KAFKA__MAX_POLL_RECORDS"] = "200"
    group, topic = crashy.kafka.group_id, crashy.topics.inference

    def done():
        return sum(v for (t, _), v in committed(broker, group).items() if t == topic)

    # kill -9 twice, mid-stream when the machine is slow enough to catch it;
    # traffic arrives in parts, so every new process has work and restores state
    sent = 0
    for upto, kill_at in ((0.5, 0.25), (0.8, 0.6)):
        produce(broker, topic, stream[sent:int(upto * len(stream))])
        sent = int(upto * len(stream))
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        assert wait_for(lambda kill_at=kill_at: done() >= kill_at * len(stream), 90)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    produce(broker, topic, stream[sent:])
    log = tmp_path / "final.log"
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))  # noqa: SIM115
    try:
        assert wait_for(lambda: '"daemon_starting"' in log.read_text(), 30)
        assert wait_for(lambda: done() == len(stream), 120)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert '"checkpoint_restored"' in log.read_text()
    got = _finding_ids(broker, crashy, expect=len(expected))
    # Redelivery may repeat a finding, never change or lose one.
    assert sorted(set(got)) == expected


def test_a_topic_the_checkpoint_had_not_seen_is_replayed_from_where_the_state_began(
        broker, tmp_path, client):
    """The first checkpoint of a partition came after access events only; the
    inference history was then processed and committed, and the process was
    killed before the next checkpoint. The restart must feed that history to
    the state again (it resumed at the commit before, and missed the flood)."""
    settings = make_settings(broker, kafka={"client": client})
    env = _env(settings)
    env.update({"MLWATCHD_STATE__DIR": str(tmp_path / "state"),
                "MLWATCHD_STATE__CHECKPOINT_EVERY_S": "3600"})
    config = tmp_path / "detectors.yaml"
    config.write_text(orjson.dumps({"detectors": {
        name: {"params": cfg.params} for name, cfg in settings.detectors.items()}}).decode())
    cmd = [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)]
    group, inf, acc = settings.kafka.group_id, settings.topics.inference, settings.topics.access
    produce(broker, acc, [(b"alice", orjson.dumps({
        "ts": T0, "principal": "alice", "action": "login", "outcome": "success"}))])
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: committed(broker, group).get((acc, 0), 0) == 1, 60)
        history = _history(60)
        produce(broker, inf, history)
        assert wait_for(lambda: committed(broker, group).get((inf, 0), 0) == len(history), 60)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    flood = _flood(3700)
    produce(broker, inf, flood)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: committed(broker, group).get((inf, 0), 0)
                        == len(history) + len(flood), 60)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    found = [decode_finding(m.value) for m in
             read_all(broker, settings.topics.findings, expect=1, timeout_s=10)]
    assert "mallory" in {f.entity.id for f in found}, "the history reached the baseline"
