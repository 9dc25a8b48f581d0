"""Intake: a finding is matched against the routes and recorded in the outbox.

:meth:`Intake.submit` never waits on the network: it matches routes (in
memory) and, in one short outbox transaction, records the finding as seen per
route, opens or updates the route's incident for its dedup key, and queues
the alert (:class:`~playbooks.queueing.ActionQueue`). A finding already seen on
a route (submitted again after a redelivery, or taken by another replica:
:meth:`Intake.mark_seen`) queues nothing. An incident whose window has passed
is closed first (the timer may not have got to it yet); a more severe finding
alerts again at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable
from typing import Final

import structlog

from detectors.findings import Finding, encode_finding, severity_at_least
from playbooks.actions import ActionCall
from playbooks.audit import AuditTrail
from playbooks.incidents import Incidents
from playbooks.model import PlaybookSet, Route
from playbooks.outbox import Outbox, OutboxUnavailable
from playbooks.queueing import ActionQueue
from playbooks.redact import Redactor

__all__ = ["INTAKE_WAIT_S", "Intake"]

log = structlog.get_logger("mlwatchd.playbooks")

#: How long ``submit`` (the consumer loop) waits for the outbox before it says
#: OutboxUnavailable; background threads wait the outbox's longer busy timeout.
INTAKE_WAIT_S: Final = 2.0


class Intake:
    """Findings in: route matching, dedup, incidents opened and counted, alerts queued."""

    def __init__(self, playbooks: PlaybookSet, outbox: Outbox, queue: ActionQueue,
                 audit: AuditTrail, incidents: Incidents, *, clock: Callable[[], float],
                 wake: threading.Event, redactor: Redactor) -> None:
        self.playbooks = playbooks
        self.outbox = outbox
        self.queue = queue
        self.audit = audit
        self.incidents = incidents
        self._clock = clock
        self._wake = wake
        self._redactor = redactor

    def submit(self, finding: Finding) -> None:
        """Match ``finding`` and queue the resulting actions; OutboxUnavailable if not recorded."""
        routes = list(self.playbooks.matching(finding))
        if not routes:
            self.audit.event("finding_unmatched", finding_id=finding.finding_id,
                             kind=finding.kind)
            return
        now = self._clock()
        try:
            encoded = encode_finding(finding)
            with self.outbox.tx(timeout_s=INTAKE_WAIT_S) as db:
                for route in routes:
                    self._intake(db, route, finding, encoded, now)
        except OutboxUnavailable as exc:
            # Not recorded: the caller keeps the finding and submits it again.
            log.warning("playbook_submit_failed", finding_id=finding.finding_id,
                        error=self._redactor.text(str(exc)), detail="not recorded; retried")
            self.audit.event("submit_failed", finding_id=finding.finding_id,
                             reason="outbox_unavailable")
            raise
        except Exception as exc:  # the consumer loop must never die of a response problem
            log.exception("playbook_submit_failed", finding_id=finding.finding_id)
            self.audit.event("submit_failed", finding_id=finding.finding_id,
                             reason=type(exc).__name__)
            return
        self._wake.set()

    def _intake(self, db: sqlite3.Connection, route: Route, finding: Finding, encoded: bytes,
                now: float) -> None:
        spec = route.spec
        fid = finding.finding_id
        if db.execute("INSERT OR IGNORE INTO seen (route, finding_id, at) VALUES (?, ?, ?)",
                      (route.name, fid, now)).rowcount == 0:
            self.audit.event("finding_duplicate", finding_id=fid, route=route.name)
            return
        # Other replicas read this from the audit topic (daemon.response.PeerSeen):
        # a finding re-emitted elsewhere after a partition moved is not re-alerted.
        self.audit.record(db, "finding_received", now, finding_id=fid, route=route.name)
        call = ActionCall("alert", route.name, "", finding, "")
        key = spec.dedup.key.render(call.context(None, outside=False))
        row = db.execute("SELECT * FROM incidents WHERE route = ? AND dedup_key = ? AND "
                         "status = 'open'", (route.name, key)).fetchone()
        continued = _continued_incident(db, route.name, key, finding)
        row = continued if continued is not None else row
        if continued is None and row is not None and now - row["last_seen"] > spec.dedup.window:
            self.incidents.close(db, row, now)  # the timer has not got to it yet
            row = None
        if row is None:
            incident_id = hashlib.sha256(f"{route.name}\x1f{key}\x1f{now!r}".encode()
                                         ).hexdigest()[:20]
            escalate_at = now + spec.escalation.after if spec.escalation else None
            db.execute(
                "INSERT INTO incidents (id, route, dedup_key, opened_at, last_seen, "
                "last_notice, max_severity, first_finding, escalate_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (incident_id, route.name, key, now, now, now, finding.severity, encoded,
                 escalate_at))
            self.audit.record(db, "incident_opened", now, finding_id=fid, route=route.name,
                              incident_id=incident_id)
            self.audit.event("incident_opened", finding_id=fid, route=route.name,
                             incident_id=incident_id)
            self.queue.run_route(db, route, "alert", finding, encoded, incident_id, now,
                                 count=1, first_seen=now)
            return
        count = row["count"] + 1
        if not severity_at_least(row["max_severity"], finding.severity):
            # More severe than anything so far in this incident: alert again now.
            db.execute("UPDATE incidents SET count = ?, last_seen = ?, last_notice = ?, "
                       "pending_repeats = 0, max_severity = ? WHERE id = ?",
                       (count, now, now, finding.severity, row["id"]))
            self.queue.run_route(db, route, "alert", finding, encoded, row["id"], now,
                                 count=count, first_seen=row["opened_at"],
                                 extra={"repeats": row["pending_repeats"],
                                        "wait_for_thread": True})
            return
        db.execute("UPDATE incidents SET count = ?, last_seen = ?, "
                   "pending_repeats = pending_repeats + 1 WHERE id = ?",
                   (count, now, row["id"]))

    def mark_seen(self, route: str, finding_id: str, at: float) -> bool:
        """Record that another replica took ``finding_id`` on ``route``; True if new here."""
        with self.outbox.tx() as db:
            return bool(db.execute(
                "INSERT OR IGNORE INTO seen (route, finding_id, at) VALUES (?, ?, ?)",
                (route, finding_id, at)).rowcount)


def _continued_incident(db: sqlite3.Connection, route: str, key: str,
                        finding: Finding) -> sqlite3.Row | None:
    """The route's latest incident for ``key``, reopened if closed, when ``finding``
    is a detector incident's update (``incident.seq`` > 1, not an escalation):
    it is a repeat of that incident even after ``dedup.window``, never a new alert.
    None otherwise (and when no incident for the key is left)."""
    inc = finding.incident
    if inc is None or inc.seq <= 1 or inc.escalated:
        return None
    row: sqlite3.Row | None = db.execute(
        "SELECT * FROM incidents WHERE route = ? AND dedup_key = ? "
        "ORDER BY status = 'open' DESC, opened_at DESC LIMIT 1", (route, key)).fetchone()
    if row is None or row["status"] == "open":
        return row
    db.execute("UPDATE incidents SET status = 'open', closed_at = NULL WHERE id = ?",
               (row["id"],))
    reopened: sqlite3.Row | None = db.execute(
        "SELECT * FROM incidents WHERE id = ?", (row["id"],)).fetchone()
    return reopened
