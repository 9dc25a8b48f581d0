"""Turning a lifecycle step into outbox jobs: one per action of a route that handles it.

:class:`ActionQueue` is shared by intake (alerts), the incident timers
(repeats, resolved notices, escalations) and the approval flow: each queues
``phase`` for a route's actions in the caller's transaction, with an
idempotency key (finding id + route + action, + phase and a counter after the
alert), so a finding submitted twice, or a step run twice, queues nothing new.
An action with ``requires_approval`` gets an approval request instead.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Mapping
from typing import Any, Final

from detectors.findings import Finding, decode_finding
from playbooks.actions import ActionCall, ActionRuntime
from playbooks.audit import AuditTrail
from playbooks.config import PlaybookSettings
from playbooks.model import BoundAction, PlaybookSet, Route
from playbooks.outbox import Outbox

__all__ = ["APPROVAL_PREFIX", "ActionQueue", "idempotency_key", "incident_finding"]

#: Internal action names: approval requests and their updates go through Slack.
APPROVAL_PREFIX: Final = "approval:"


def idempotency_key(finding_id: str, route: str, action: str, phase: str, suffix: str) -> str:
    """Finding id + route + action (+ phase and a counter after alert).

    >>> idempotency_key("f1", "r", "chat", "alert", ""), idempotency_key("f1", "r", "chat",
    ...                                                                   "repeat", "3")
    ('f1:r:chat', 'f1:r:chat:repeat:3')
    """
    key = f"{finding_id}:{route}:{action}"
    if phase != "alert":
        key += f":{phase}"
    return key + (f":{suffix}" if suffix else "")


def incident_finding(row: Mapping[str, Any]) -> tuple[Finding, bytes]:
    """An incident row's first finding, decoded and as stored."""
    raw = bytes(row["first_finding"])
    return decode_finding(raw), raw


class ActionQueue:
    """Queues a route's actions for one lifecycle phase (see the module docstring)."""

    def __init__(self, playbooks: PlaybookSet, settings: PlaybookSettings, outbox: Outbox,
                 runtime: ActionRuntime, audit: AuditTrail) -> None:
        self.playbooks = playbooks
        self.settings = settings
        self.outbox = outbox
        self.runtime = runtime
        self.audit = audit

    def run_route(self, db: sqlite3.Connection, route: Route, phase: str, finding: Finding,
                  encoded: bytes, incident_id: str, now: float, *, count: int,
                  first_seen: float, extra: Mapping[str, Any] | None = None,
                  suffix: str = "") -> None:
        """Queue ``phase`` for every action of ``route`` that acts on it."""
        for name in route.spec.actions:
            bound = self.playbooks.actions[name]
            if not bound.action.handles(phase):
                continue
            self.queue_action(db, route, bound, phase, finding, encoded, incident_id, now,
                              count=count, first_seen=first_seen, extra=dict(extra or {}),
                              suffix=suffix)

    def queue_action(self, db: sqlite3.Connection, route: Route, bound: BoundAction,
                     phase: str, finding: Finding, encoded: bytes, incident_id: str,
                     now: float, *, count: int, first_seen: float, extra: dict[str, Any],
                     suffix: str = "") -> None:
        dry = self.settings.dry_run or route.spec.dry_run or bound.dry_run
        idem = idempotency_key(finding.finding_id, route.name, bound.name, phase, suffix)
        if bound.requires_approval and phase in ("alert", "escalated") and not dry:
            self.request_approval(db, route, bound, phase, finding, encoded, incident_id, now,
                                  count=count, first_seen=first_seen, extra=extra, idem=idem)
            return
        if dry and bound.requires_approval:
            extra = {**extra, "would_request_approval": True}
        added = self.outbox.add_job(
            db, idem_key=idem, route=route.name, action=bound.name, phase=phase,
            dest=bound.action.destination(), incident_id=incident_id, finding=encoded,
            extra={**extra, "count": count, "first_seen": first_seen}, dry_run=dry, now=now)
        if not added:
            self.audit.event("finding_duplicate", finding_id=finding.finding_id,
                             route=route.name, action=bound.name)

    def request_approval(self, db: sqlite3.Connection, route: Route, bound: BoundAction,
                         phase: str, finding: Finding, encoded: bytes, incident_id: str,
                         now: float, *, count: int, first_seen: float, extra: dict[str, Any],
                         idem: str) -> None:
        approval_id = secrets.token_urlsafe(18)
        expires = now + self.settings.approval_timeout
        call = ActionCall(phase, route.name, bound.name, finding, idem, incident_id, count,
                          first_seen, route.spec.mitigations)
        what = bound.action.describe(call, self.runtime)
        details = {
            **extra, "approval_id": approval_id, "target_action": bound.name,
            "target_type": bound.action.name, "target_phase": phase, "target_idem": idem,
            "what": what, "expires_at": expires, "count": count, "first_seen": first_seen,
        }
        exists = db.execute("SELECT 1 FROM jobs WHERE idem_key = ?", (idem,)).fetchone()
        if exists or not self.outbox.add_job(
                db, idem_key=f"{idem}:approval", route=route.name,
                action=APPROVAL_PREFIX + bound.name, phase="approval", dest="slack",
                incident_id=incident_id, finding=encoded, extra=details, dry_run=False, now=now):
            return  # already requested (or already run) for this finding
        db.execute(
            "INSERT INTO approvals (id, route, action, incident_id, finding, extra, created_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (approval_id, route.name, bound.name, incident_id, encoded, json.dumps(details),
             now, expires))
        self.audit.record(db, "approval_requested", now, finding_id=finding.finding_id,
                          route=route.name, action=bound.name, action_type=bound.action.name,
                          approval_id=approval_id, idempotency_key=idem)
        self.audit.event("approval_requested", finding_id=finding.finding_id, route=route.name,
                         action=bound.name)
