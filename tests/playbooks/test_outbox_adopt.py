"""A removed replica's undelivered alerts are not stranded in its own outbox (issue #15).

With one outbox per replica, a replica removed by a scale-down (SIGTERM while
Slack refuses, so its alert waits for a retry) used to leave the alert in a
file nobody opened again. Each process holding an outbox keeps a shared flock
on ``<outbox>.owner``; with ``playbooks.adopt_outboxes`` a live replica takes
over the jobs of an outbox whose lock is free (every owner gone), once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from pb_helpers import build_finding

from playbooks.adoption import adopt_orphans
from playbooks.outbox import OWNER_SUFFIX, Outbox

PLAYBOOK = """
actions:
  chat: {type: slack}
routes:
  - name: extraction
    match: {kinds: [model_extraction], min_severity: high}
    actions: [chat]
    dedup: {key: "{kind}:{entity.id}", window: 30m}
"""


def _job(box: Outbox, key: str, incident: str = "") -> None:
    with box.tx() as db:
        box.add_job(db, idem_key=key, route="r", action="a", phase="alert", dest="slack",
                    incident_id=incident, finding=b"{}", extra={}, dry_run=False, now=0.0)


def _status(path) -> dict[str, str]:
    box = Outbox(path)
    try:
        return {j["idem_key"]: j["status"] for j in box.jobs()}
    finally:
        box.close()


def test_a_stopped_replicas_pending_alert_is_delivered_by_a_live_one(engine_factory,
                                                                     fake_slack):
    fake_slack.set_fault("server_error")
    removed, events = engine_factory(PLAYBOOK, outbox="outbox-r1.sqlite3",
                                     retry_backoff=30.0, retry_backoff_max=30.0)
    finding = build_finding()
    removed.submit(finding)
    events.wait_for("action_retry")
    assert removed.stop(timeout=0.5) == 1  # SIGTERM: kept in its outbox, retry not due
    fake_slack.set_fault(None)

    live, live_events = engine_factory(PLAYBOOK, outbox="outbox-r2.sqlite3",
                                       adopt_outboxes="outbox-r*.sqlite3")
    [done] = live_events.wait_for("action_delivered", timeout=15.0)
    assert finding.finding_id in done["idempotency_key"]
    [adopted] = live_events.wait_for("outbox_adopted")
    assert adopted["outbox"].endswith("outbox-r1.sqlite3") and adopted["jobs"] == 1
    posts = [r for r in fake_slack.delivered if r.endpoint == "chat.postMessage"]
    assert len(posts) == 1
    assert set(_status(removed.outbox.path).values()) == {"adopted"}
    time.sleep(2.5)  # another adoption round: nothing taken twice
    assert len(live_events.of("outbox_adopted")) == 1 and len(live.outbox.jobs()) == 1


def test_only_outboxes_whose_owners_are_all_gone_are_adopted(tmp_path):
    mine = Outbox(tmp_path / "outbox-a.sqlite3")
    alive = Outbox(tmp_path / "outbox-b.sqlite3")  # another owner, still open
    _job(alive, "alive-1")
    # A replica process that queued a job and claimed another, then got kill -9.
    code = ("import sys, time; from playbooks.outbox import Outbox; b = Outbox(sys.argv[1]);\n"
            "for k in ('dead-1', 'dead-2'):\n"
            "    with b.tx() as db: b.add_job(db, idem_key=k, route='r', action='a', "
            "phase='alert', dest='slack', incident_id='i1', finding=b'{}', extra={}, "
            "dry_run=False, now=0.0)\n"
            "with b.tx() as db: b.set_state(db, 'i1', 'a', {'ts': '1.5'})\n"
            "b.claim(1.0, set()); print('ready', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "outbox-c.sqlite3")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert adopt_orphans(mine, "outbox-*.sqlite3", now=5.0) == {}  # c is still alive
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # A file without an owner lock (not an outbox of this version) is left alone.
    (tmp_path / "outbox-old.sqlite3").write_bytes(b"")
    os.chmod(tmp_path / "outbox-old.sqlite3", 0o600)

    taken = adopt_orphans(mine, "outbox-*.sqlite3", now=5.0)
    assert taken == {str(tmp_path / "outbox-c.sqlite3"): 2}
    jobs = {j["idem_key"]: j for j in mine.jobs()}
    assert {k: j["status"] for k, j in jobs.items()} == {"dead-1": "pending", "dead-2": "pending"}
    assert all(j["next_at"] <= 5.0 for j in jobs.values())  # due at once
    with mine.tx() as db:
        assert mine.state(db, "i1", "a") == {"ts": "1.5"}  # the Slack thread goes along
    assert adopt_orphans(mine, "outbox-*.sqlite3", now=6.0) == {}
    assert _status(alive.path) == {"alive-1": "pending"}
    # The replica restarted later finds its jobs taken, and holds its lock again.
    again = Outbox(tmp_path / "outbox-c.sqlite3")
    assert {j["status"] for j in again.jobs()} == {"adopted"}
    assert adopt_orphans(mine, "outbox-*.sqlite3", now=7.0) == {}
    again.close()
    assert (tmp_path / ("outbox-c.sqlite3" + OWNER_SUFFIX)).stat().st_mode & 0o077 == 0
