"""Slack clicks: acknowledging an incident, and approving or denying an action.

:class:`Approvals` answers Slack's POST to the interactivity URL (signature,
allowed users, payload) and records decisions in the outbox: an approved
action is queued as a job (delivered only with the approver recorded, see
:mod:`playbooks.delivery`), every decision (also ``expired``, from the
incident timers) updates the approval message. An acknowledgement stops the
incident's escalation and posts a notice into its thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from detectors.findings import decode_finding
from playbooks.actions import ActionRuntime
from playbooks.audit import AuditTrail
from playbooks.config import PlaybookSettings
from playbooks.interactivity import ACK, APPROVE, Click, parse_clicks, verify_signature
from playbooks.model import PlaybookSet
from playbooks.outbox import Outbox
from playbooks.queueing import APPROVAL_PREFIX, ActionQueue, incident_finding

__all__ = ["Approvals"]

log = structlog.get_logger("mlwatchd.playbooks")


class Approvals:
    """Interactivity endpoint and the approval state machine (pending -> decided)."""

    def __init__(self, playbooks: PlaybookSet, settings: PlaybookSettings, outbox: Outbox,
                 queue: ActionQueue, audit: AuditTrail, runtime: ActionRuntime, *,
                 signing_secret: bytes, clock: Callable[[], float],
                 wake: threading.Event) -> None:
        self.playbooks = playbooks
        self.settings = settings
        self.outbox = outbox
        self.queue = queue
        self.audit = audit
        self.runtime = runtime
        self.signing_secret = signing_secret
        self._clock = clock
        self._wake = wake

    def handle_slack_interaction(self, headers: Mapping[str, str], body: bytes
                                 ) -> tuple[int, bytes]:
        """Slack's POST to the interactivity URL -> (HTTP status, body).

        401 for a missing/bad/stale signature (nothing runs), 403 for a user
        not in ``allowed_users``, 400 for a malformed payload, 404 when
        interactivity is off; otherwise 200 (also for an already-decided
        approval, which stays decided).
        """
        inter = self.settings.interactivity
        if not self.signing_secret:
            return 404, b"interactivity is off"
        now = self._clock()
        if not verify_signature(self.signing_secret, headers, body, now=now,
                                max_age_s=inter.max_age_s):
            log.warning("slack_interaction_rejected", reason="bad or stale signature")
            self.audit.event("interaction_rejected", reason="signature")
            return 401, b"invalid signature"
        try:
            clicks = parse_clicks(body)
        except ValueError as exc:
            return 400, str(exc).encode()
        for click in clicks:
            if inter.allowed_users and click.user_id not in inter.allowed_users:
                log.warning("slack_interaction_forbidden", user=click.user_id,
                            action_id=click.action_id)
                with self.outbox.tx() as db:
                    self.audit.record(db, "interaction_forbidden", now, user=click.user_id,
                                      action_id=click.action_id)
                self.audit.event("interaction_rejected", reason="user", user=click.user_id)
                return 403, b"not allowed to decide"
            try:
                self._click(click, now)
            except Exception:
                log.exception("slack_interaction_failed", action_id=click.action_id)
                return 500, b"internal error"
        self._wake.set()
        return 200, b""

    def _click(self, click: Click, now: float) -> None:
        with self.outbox.tx() as db:
            if click.action_id == ACK:
                self._acknowledge(db, click, now)
                return
            row = db.execute("SELECT * FROM approvals WHERE id = ?", (click.value,)).fetchone()
            if row is None:
                log.warning("slack_interaction_unknown_approval")
                return
            if row["status"] != "pending":
                log.info("slack_interaction_already_decided", approval=row["id"],
                         status=row["status"], user=click.user_id)
                return
            if click.channel and click.message_ts and not row["message_ts"]:
                db.execute("UPDATE approvals SET message_channel = ?, message_ts = ? "
                           "WHERE id = ?", (click.channel, click.message_ts, row["id"]))
                row = db.execute("SELECT * FROM approvals WHERE id = ?", (row["id"],)
                                 ).fetchone()
            verdict = "approved" if click.action_id == APPROVE else "denied"
            self.decide(db, row, verdict, click.user_id, now)

    def _acknowledge(self, db: sqlite3.Connection, click: Click, now: float) -> None:
        row = db.execute("SELECT * FROM incidents WHERE id = ?", (click.value,)).fetchone()
        if row is None or row["acked_at"] is not None or row["status"] != "open":
            return
        db.execute("UPDATE incidents SET acked_at = ?, acked_by = ? WHERE id = ?",
                   (now, click.user_id, row["id"]))
        route = self.playbooks.route(row["route"])
        finding, raw = incident_finding(row)
        if route is not None:
            self.queue.run_route(db, route, "acknowledged", finding, raw, row["id"], now,
                                 count=row["count"], first_seen=row["opened_at"],
                                 extra={"headline": "Acknowledged",
                                        "detail": f"by Slack user {click.user_id}",
                                        "wait_for_thread": True})
        self.audit.record(db, "incident_acknowledged", now, finding_id=finding.finding_id,
                          route=row["route"], incident_id=row["id"], user=click.user_id)
        self.audit.event("incident_acknowledged", route=row["route"], incident_id=row["id"],
                         user=click.user_id)

    def decide(self, db: sqlite3.Connection, row: Any, verdict: str, user: str | None,
               now: float) -> None:
        """pending -> approved (queue the action) / denied / expired; update the message."""
        db.execute("UPDATE approvals SET status = ?, decided_at = ?, decided_by = ? "
                   "WHERE id = ? AND status = 'pending'", (verdict, now, user, row["id"]))
        details = json.loads(row["extra"])
        finding = decode_finding(bytes(row["finding"]))
        raw = bytes(row["finding"])
        route = self.playbooks.route(row["route"])
        bound = self.playbooks.actions.get(row["action"])
        if verdict == "approved" and route is not None and bound is not None:
            extra = {k: v for k, v in details.items() if k in ("repeats", "headline", "detail")}
            extra["approved_by"] = user
            self.outbox.add_job(
                db, idem_key=details["target_idem"], route=route.name, action=bound.name,
                phase=details.get("target_phase", "alert"), dest=bound.action.destination(),
                incident_id=row["incident_id"], finding=raw,
                extra={**extra, "count": details.get("count", 1),
                       "first_seen": details.get("first_seen", now)},
                dry_run=False, now=now)
        self.audit.record(db, f"approval_{verdict}", now, finding_id=finding.finding_id,
                          route=row["route"], action=row["action"], approval_id=row["id"],
                          user=user)
        log.info(f"approval_{verdict}", finding_id=finding.finding_id, route=row["route"],
                 action=row["action"], user=user)
        self.audit.event(f"approval_{verdict}", finding_id=finding.finding_id,
                         route=row["route"], action=row["action"], user=user)
        if row["message_ts"] or self.runtime.slack is not None:
            headline = {"approved": "Approved", "denied": "Denied",
                        "expired": "Expired (nobody decided)"}[verdict]
            self.outbox.add_job(
                db, idem_key=f"{details['target_idem']}:decision", route=row["route"],
                action=APPROVAL_PREFIX + row["action"], phase="decision", dest="slack",
                incident_id=row["incident_id"], finding=raw,
                extra={**details, "headline": headline, "user": user,
                       "message_ts": row["message_ts"], "message_channel":
                           row["message_channel"], "wait_for_thread": False},
                dry_run=False, now=now)
