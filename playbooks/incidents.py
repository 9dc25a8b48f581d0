"""Incident timers: repeat summaries, resolved notices, escalations, approval expiry.

An incident is one route and dedup key: the first finding alerts, later ones
within ``dedup.window`` count, and at most every ``realert`` a summary ("N
more in the last M minutes") goes out; no matching finding for the window
closes it (``resolved``); not acknowledged within ``escalation.after`` runs
the escalation route. :meth:`Incidents.tick` does what is due, in one outbox
transaction; :meth:`Incidents.run` is the engine's timer thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import structlog

from detectors.findings import rfc3339
from playbooks.approvals import Approvals
from playbooks.audit import AuditTrail
from playbooks.config import PlaybookSettings
from playbooks.model import PlaybookSet, Route
from playbooks.outbox import Outbox, OutboxUnavailable
from playbooks.queueing import ActionQueue, incident_finding
from playbooks.redact import Redactor

__all__ = ["Incidents", "minutes"]

log = structlog.get_logger("mlwatchd.playbooks")


def minutes(seconds: float) -> str:
    """A duration for a notice, in whole minutes (at least one).

    >>> minutes(30), minutes(600)
    ('1 minute', '10 minutes')
    """
    count = max(1, round(seconds / 60))
    return f"{count} minute{'s' if count != 1 else ''}"


class Incidents:
    """Runs the incident lifecycle's timed steps (see the module docstring)."""

    def __init__(self, playbooks: PlaybookSet, settings: PlaybookSettings, outbox: Outbox,
                 queue: ActionQueue, audit: AuditTrail, approvals: Approvals, *,
                 clock: Callable[[], float], wake: threading.Event,
                 redactor: Redactor) -> None:
        self.playbooks = playbooks
        self.settings = settings
        self.outbox = outbox
        self.queue = queue
        self.audit = audit
        self.approvals = approvals
        self._clock = clock
        self._wake = wake
        self._redactor = redactor
        self._purged_at = 0.0

    def run(self, stopping: threading.Event) -> None:
        interval = max(0.05, self.settings.tick_interval)
        while not stopping.wait(interval):
            try:
                self.tick()
            except OutboxUnavailable as exc:
                log.warning("playbook_tick_failed", error=self._redactor.text(str(exc)))
            except Exception:
                log.exception("playbook_tick_failed")

    def tick(self, now: float | None = None) -> None:
        """Run due timers once: repeats, resolves, escalations, approval expiry, purge."""
        now = self._clock() if now is None else now
        queued = False
        if self.outbox.recover_running(include_own=False):
            # a replica sharing this outbox died mid-delivery
            log.warning("playbook_jobs_recovered", detail="left running by a process that is gone")
            queued = True
        with self.outbox.tx() as db:
            for row in db.execute("SELECT * FROM incidents WHERE status = 'open'").fetchall():
                route = self.playbooks.route(row["route"])
                if route is None:
                    continue
                spec = route.spec
                if now - row["last_seen"] >= spec.dedup.window:
                    self.close(db, row, now)
                    queued = True
                    continue
                if row["pending_repeats"] > 0 and now - row["last_notice"] >= spec.realert:
                    self._repeat_notice(db, route, row, now)
                    queued = True
                if (spec.escalation is not None and not row["escalated"]
                        and row["acked_at"] is None and row["escalate_at"] is not None
                        and row["escalate_at"] <= now):
                    self._escalate(db, route, row, now)
                    queued = True
            for row in db.execute("SELECT * FROM approvals WHERE status = 'pending' AND "
                                  "expires_at <= ?", (now,)).fetchall():
                self.approvals.decide(db, row, "expired", None, now)
                queued = True
        if now - self._purged_at > 3600:
            self._purged_at = now
            self.outbox.purge(now - self.settings.retention)
        if queued:
            self._wake.set()

    def _repeat_notice(self, db: sqlite3.Connection, route: Route, row: Any,
                       now: float) -> None:
        finding, raw = incident_finding(row)
        pending = int(row["pending_repeats"])
        headline = f"{pending} more in the last {minutes(now - row['last_notice'])}"
        db.execute("UPDATE incidents SET pending_repeats = 0, last_notice = ? WHERE id = ?",
                   (now, row["id"]))
        self.queue.run_route(db, route, "repeat", finding, raw, row["id"], now,
                             count=row["count"], first_seen=row["opened_at"],
                             suffix=str(row["count"]),
                             extra={"headline": headline, "repeats": pending,
                                    "detail": f"{row['count']} findings since "
                                              f"{rfc3339(row['opened_at'], millis=False)}",
                                    "wait_for_thread": True})
        self.audit.record(db, "incident_repeat", now, finding_id=finding.finding_id,
                          route=route.name, incident_id=row["id"], repeats=pending)
        self.audit.event("incident_repeat", route=route.name, incident_id=row["id"],
                         repeats=pending)

    def close(self, db: sqlite3.Connection, row: Any, now: float) -> None:
        """Close an open incident: pending repeats first, then the resolved notices."""
        route = self.playbooks.route(row["route"])
        if route is not None and row["pending_repeats"] > 0:
            self._repeat_notice(db, route, row, now)  # counted repeats are never dropped
        db.execute("UPDATE incidents SET status = 'closed', closed_at = ? WHERE id = ?",
                   (now, row["id"]))
        finding, raw = incident_finding(row)
        if route is not None and route.spec.resolve.notify:
            quiet = minutes(route.spec.dedup.window)
            extra = {"headline": "Resolved",
                     "detail": f"no matching finding for {quiet}; {row['count']} finding"
                               f"{'s' if row['count'] != 1 else ''} in this incident",
                     "wait_for_thread": True}
            self.queue.run_route(db, route, "resolved", finding, raw, row["id"], now,
                                 count=row["count"], first_seen=row["opened_at"], extra=extra)
            esc = route.spec.escalation
            if row["escalated"] and esc is not None:
                target = self.playbooks.route(esc.route)
                if target is not None:
                    self.queue.run_route(db, target, "resolved", finding, raw, row["id"], now,
                                         count=row["count"], first_seen=row["opened_at"],
                                         extra=extra)
        self.audit.record(db, "incident_resolved", now, finding_id=finding.finding_id,
                          route=row["route"], incident_id=row["id"], count=row["count"])
        self.audit.event("incident_resolved", route=row["route"], incident_id=row["id"],
                         count=row["count"])

    def _escalate(self, db: sqlite3.Connection, route: Route, row: Any, now: float) -> None:
        esc = route.spec.escalation
        assert esc is not None
        target = self.playbooks.route(esc.route)
        db.execute("UPDATE incidents SET escalated = 1 WHERE id = ?", (row["id"],))
        finding, raw = incident_finding(row)
        after = minutes(esc.after)
        common = {"count": row["count"], "first_seen": row["opened_at"]}
        self.queue.run_route(db, route, "escalated", finding, raw, row["id"], now, **common,
                             extra={"headline": f"Escalated to {esc.route}",
                                    "detail": f"not acknowledged within {after}",
                                    "wait_for_thread": True})
        if target is not None:
            self.queue.run_route(db, target, "escalated", finding, raw, row["id"], now,
                                 **common,
                                 extra={"headline": f"Escalated from {route.name}",
                                        "detail": f"not acknowledged within {after}",
                                        "repeats": row["count"] - 1})
        self.audit.record(db, "incident_escalated", now, finding_id=finding.finding_id,
                          route=route.name, incident_id=row["id"], to_route=esc.route)
        self.audit.event("incident_escalated", route=route.name, incident_id=row["id"],
                         to_route=esc.route)
