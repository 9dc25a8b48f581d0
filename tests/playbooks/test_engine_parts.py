"""The response engine's parts, each driven alone: no threads, no network, a fake clock.

Intake, the incident timers, delivery and the rate-limit pauses are built from
their own typed collaborators on an in-memory outbox, as the engine wires
them (``playbooks/engine.py``); the daemon sees only ``ResponseSide``.
"""

from __future__ import annotations

import ast
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pb_helpers import Events, build_finding, write_playbooks

from playbooks.actions import ActionRuntime
from playbooks.approvals import Approvals
from playbooks.audit import AuditTrail
from playbooks.config import PlaybookSettings
from playbooks.delivery import Delivery, Pauses
from playbooks.engine import ResponseEngine
from playbooks.incidents import Incidents
from playbooks.intake import Intake
from playbooks.outbox import MEMORY, Outbox
from playbooks.protocol import ResponseSide
from playbooks.queueing import ActionQueue
from playbooks.redact import Redactor

PLAYBOOK = """
actions:
  note: {type: log}
routes:
  - name: extraction
    match: {kinds: [model_extraction]}
    actions: [note]
    dedup: {key: "{kind}:{entity.id}", window: 10m}
    realert: 1m
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[dict[str, Any]]:
    playbooks = write_playbooks(tmp_path / "pb", PLAYBOOK)
    settings = PlaybookSettings.model_validate({"dir": str(tmp_path / "pb"),
                                                "retry_backoff": 0.05})
    outbox, clock, wake, events = Outbox(MEMORY), Clock(), threading.Event(), Events()
    redactor = Redactor()
    runtime = ActionRuntime(clock=clock)
    audit = AuditTrail(outbox, redactor, publish=None, topic="audit", on_event=events)
    queue = ActionQueue(playbooks, settings, outbox, runtime, audit)
    approvals = Approvals(playbooks, settings, outbox, queue, audit, runtime,
                          signing_secret=b"", clock=clock, wake=wake)
    incidents = Incidents(playbooks, settings, outbox, queue, audit, approvals,
                          clock=clock, wake=wake, redactor=redactor)
    intake = Intake(playbooks, outbox, queue, audit, incidents, clock=clock, wake=wake,
                    redactor=redactor)
    delivery = Delivery(playbooks, settings, outbox, runtime, audit, clock=clock, wake=wake,
                        redactor=redactor)
    yield {"outbox": outbox, "clock": clock, "events": events, "intake": intake,
           "incidents": incidents, "delivery": delivery, "approvals": approvals, "wake": wake}
    outbox.close()


def _phases(outbox: Outbox) -> list[str]:
    return [j["phase"] for j in outbox.jobs()]


def test_intake_opens_one_incident_counts_repeats_and_ignores_a_resubmission(parts):
    intake, outbox = parts["intake"], parts["outbox"]
    first = build_finding()
    intake.submit(first)
    intake.submit(first)  # redelivered
    intake.submit(build_finding())  # same dedup key
    assert _phases(outbox) == ["alert"] and parts["wake"].is_set()
    assert parts["events"].names().count("finding_duplicate") == 1
    with outbox.tx() as db:
        row = db.execute("SELECT count, pending_repeats FROM incidents").fetchone()
    assert (row["count"], row["pending_repeats"]) == (2, 1)
    assert intake.mark_seen("extraction", "another-replicas-finding", 0.0) is True
    assert intake.mark_seen("extraction", "another-replicas-finding", 0.0) is False


def test_incident_timers_send_the_repeat_after_realert_and_resolve_after_the_window(parts):
    intake, incidents, outbox, clock = (parts["intake"], parts["incidents"], parts["outbox"],
                                        parts["clock"])
    intake.submit(build_finding())
    intake.submit(build_finding())
    incidents.tick()
    assert _phases(outbox) == ["alert"]  # realert (1m) not reached
    clock.now += 61
    incidents.tick()
    assert _phases(outbox) == ["alert", "repeat"]
    repeat = json.loads(outbox.jobs()[1]["extra"])
    assert repeat["headline"] == "1 more in the last 1 minute"
    clock.now += 601
    incidents.tick()
    assert _phases(outbox) == ["alert", "repeat", "resolved"]
    assert "incident_resolved" in parts["events"].names()


def test_delivery_attempts_a_claimed_job_once_and_records_the_outcome(parts):
    parts["intake"].submit(build_finding())
    delivery, outbox, clock = parts["delivery"], parts["outbox"], parts["clock"]
    job = outbox.claim(clock(), delivery.pauses.now())
    assert job is not None
    delivery.attempt(dict(job))
    [done] = outbox.jobs()
    assert done["status"] == "delivered" and done["attempts"] == 1
    assert "unknown_since" in json.loads(done["extra"])  # marked before the attempt
    assert parts["events"].of("action_delivered")[0]["action_type"] == "log"


def test_pauses_hold_a_destination_until_its_time_and_then_forget_it():
    clock = Clock()
    pauses = Pauses(clock)
    pauses.pause("slack", clock.now + 5)
    pauses.pause("slack", clock.now + 1)  # a shorter pause does not shorten it
    assert pauses.now() == {"slack"}
    clock.now += 4.9
    assert pauses.now() == {"slack"}
    clock.now += 0.2
    assert pauses.now() == set()


def test_interactivity_off_answers_404_without_touching_the_outbox(parts):
    assert parts["approvals"].handle_slack_interaction({}, b"payload=x") == \
        (404, b"interactivity is off")


def test_the_engine_is_the_daemons_response_side(tmp_path):
    playbooks = write_playbooks(tmp_path / "pb", PLAYBOOK)
    engine = ResponseEngine(playbooks, PlaybookSettings.model_validate(
        {"dir": str(tmp_path / "pb"), "outbox_path": MEMORY}))
    assert isinstance(engine, ResponseSide)
    engine.stop(0)


def test_no_class_in_playbooks_is_250_lines_or_more():
    root = Path(__file__).resolve().parents[2] / "playbooks"
    sizes = {}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                sizes[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert sizes and max(sizes.values()) < 250, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
