"""Issue #12 item 14 with the real broker: a finding the outbox cannot record is not committed.

The outbox is locked by another process while a flood produces findings: the
daemon holds the batch (no commit, nothing posted, /readyz says why); once
the lock is released the same findings are recorded, posted and committed.
Before: ``submit`` gave up after 30 s, the batch was committed and the alert
was lost.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from daemon.lab.fake_slack import FakeSlack
from daemon.metrics import Metrics
from daemon.response import build_response, outbox_path
from tests.integration.kafka_helpers import (
    DaemonThread,
    committed,
    inference,
    make_settings,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0

PLAYBOOK = """
actions:
  chat: {type: slack}
routes:
  - name: floods
    match: {kinds: [denial_of_service], min_severity: medium}
    actions: [chat]
"""


def _flood() -> list[tuple[bytes, bytes]]:
    events = [(who.encode(), inference(T0 + i * 10, who, i))
              for i in range(60) for who in ("alice", "mallory")]
    events += [(b"mallory", inference(T0 + 600 + i * 0.1, "mallory", 1000 + i))
               for i in range(300)]
    return events


def test_a_locked_outbox_holds_the_batch_and_the_alert_arrives_after_unlock(broker, tmp_path):
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "floods.yaml").write_text(PLAYBOOK)
    with FakeSlack() as slack:
        settings = make_settings(broker, slack={"webhook_url": slack.webhook_url},
                                 state={"dir": str(tmp_path / "state")},
                                 playbooks={"dir": str(tmp_path / "pb")})
        topic, group = settings.topics.inference, settings.kafka.group_id
        response = build_response(settings, Metrics())
        with DaemonThread(settings, alerter=response) as run:
            assert wait_for(lambda: run.daemon.health.ready)
            other = sqlite3.connect(str(outbox_path(settings)), isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            stream = _flood()
            produce(broker, topic, stream)
            assert wait_for(lambda: run.daemon.health.reason ==
                            "cannot record findings in the outbox", timeout_s=60)
            time.sleep(3.0)  # several retries while locked
            held = committed(broker, group).get((topic, 0), 0)
            assert held < len(stream), "the batch with the finding was committed"
            assert slack.delivered == []
            other.execute("ROLLBACK")
            other.close()
            delivered = slack.wait_for_delivered(1, timeout=30)
            assert wait_for(lambda: committed(broker, group).get((topic, 0)) == len(stream))
            assert run.daemon.health.ready
        assert len(delivered) >= 1 and "denial" in delivered[0].text_of_everything().lower()
