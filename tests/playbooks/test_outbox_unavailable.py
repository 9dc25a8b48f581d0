"""Issue #12 item 14: an outbox that cannot record a finding says so at once, it does not pretend.

Before: ``submit`` waited 30 s on a locked outbox, logged, and returned as if
the finding had been recorded; the daemon then committed the batch and the
alert was lost. Now it raises ``OutboxUnavailable`` after a short busy
timeout and records the finding when submitted again.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
from pb_helpers import build_finding, wait_until

from playbooks.outbox import Outbox, OutboxUnavailable

CHAT = """
actions:
  chat: {type: slack}
routes:
  - name: extraction
    match: {kinds: [model_extraction]}
    actions: [chat]
"""


def _lock(path) -> sqlite3.Connection:
    """Another process's writer holding the outbox's write lock."""
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_submit_to_a_locked_outbox_raises_quickly_and_records_after_unlock(
        engine_factory, fake_slack):
    engine, events = engine_factory(CHAT, slack_route="webhook")
    finding = build_finding()
    other = _lock(engine.outbox.path)
    started = time.monotonic()
    with pytest.raises(OutboxUnavailable, match="locked"):
        engine.submit(finding)
    assert time.monotonic() - started < 5.0, "a short busy timeout, not 30 s"
    assert events.of("submit_failed")[0]["reason"] == "outbox_unavailable"
    other.execute("ROLLBACK")
    other.close()
    assert engine.outbox.count("1") == 0, "nothing was recorded"

    engine.submit(finding)  # what the daemon does with the batch it did not commit
    fake_slack.wait_for_delivered(1, timeout=10)
    assert wait_until(lambda: engine.outbox.count("status = 'delivered'") == 1)
    assert len(fake_slack.delivered) == 1


def test_a_failed_commit_leaves_no_half_transaction(tmp_path):
    """A write that fails inside ``tx`` (here: the lock is taken between statements) rolls back."""
    box = Outbox(tmp_path / "o.sqlite3", busy_timeout_s=0.2)
    with box.tx() as db:
        db.execute("INSERT INTO seen (route, finding_id, at) VALUES ('r', 'f0', 0)")
    with pytest.raises(OutboxUnavailable), box.tx() as db:
        db.execute("INSERT INTO seen (route, finding_id, at) VALUES ('r', 'f1', 0)")
        raise sqlite3.OperationalError("database or disk is full")
    with box.tx() as db:  # the connection is usable and f1 was not kept
        rows = [r[0] for r in db.execute("SELECT finding_id FROM seen ORDER BY finding_id")]
    assert rows == ["f0"]


def test_an_engine_started_on_a_locked_outbox_starts_and_delivers_after_unlock(
        engine_factory, fake_slack):
    engine, _ = engine_factory(CHAT, slack_route="webhook", start=False)
    other = _lock(engine.outbox.path)
    engine.start()  # before: the lock's error left the daemon's start with a traceback
    other.execute("ROLLBACK")
    other.close()
    engine.submit(build_finding())
    fake_slack.wait_for_delivered(1, timeout=10)


def test_a_lock_longer_than_the_intake_wait_does_not_strand_a_delivery(engine_factory, fake_slack):
    """Only the intake is short: a delivery that ends while another process holds the lock
    for longer than 2 s still records its outcome (not left 'running', not sent twice)."""
    from daemon.lab.fake_slack import Reply

    engine, events = engine_factory(CHAT, slack_route="webhook")
    fake_slack.script(Reply.slow(1.0))
    engine.submit(build_finding())
    assert wait_until(lambda: fake_slack.requests)  # the post is on its way
    other = _lock(engine.outbox.path)  # ...and the outbox is locked when it returns
    time.sleep(3.5)
    other.execute("ROLLBACK")
    other.close()
    events.wait_for("action_delivered")
    assert wait_until(lambda: engine.outbox.count("status = 'delivered'") == 1)
    assert len(fake_slack.requests) == 1


def test_submit_waits_briefly_for_this_processs_own_workers_too(engine_factory):
    """A worker stuck in a long outbox wait must not hold the consumer loop either."""
    import threading

    engine, _ = engine_factory(CHAT, slack_route="webhook")
    inside = threading.Event()

    def hold() -> None:
        with engine.outbox.tx():
            inside.set()
            time.sleep(4.0)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(5)
    started = time.monotonic()
    with pytest.raises(OutboxUnavailable, match="busy"):
        engine.submit(build_finding())
    assert time.monotonic() - started < 3.5
    holder.join()
