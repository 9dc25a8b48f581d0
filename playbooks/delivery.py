"""Delivery workers: each attempt of a due outbox job, once, and what follows from it.

A worker claims the next due job (not for a paused destination), runs the
action's ``deliver`` and records the outcome: delivered (a Slack ``ts`` kept
for the incident's thread, a TTL revert scheduled), retried with exponential
backoff (a 429's Retry-After pauses the whole destination,
:class:`Pauses`), or failed and reported after ``max_attempts`` /
``give_up_after``. Before an attempt the job is marked as possibly delivered
(``unknown_since``) until an answer says otherwise, so a later attempt after
a lost answer or a crash can look before sending again (see
:mod:`playbooks.slack_post`). An action that ``requires_approval`` runs only
with an approver recorded in the outbox (:func:`approver`), whatever the job
says.
"""

from __future__ import annotations

import json
import random
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

from detectors.findings import decode_finding
from playbooks.actions import ActionCall, ActionRuntime, ActionType, SlackAction, SlackParams
from playbooks.audit import AuditTrail
from playbooks.config import PlaybookSettings
from playbooks.model import BoundAction, PlaybookSet
from playbooks.outbox import Outbox, OutboxUnavailable
from playbooks.outcomes import Deferred, PermanentFailure, RetryLater
from playbooks.queueing import APPROVAL_PREFIX
from playbooks.redact import Redactor

__all__ = ["Delivery", "Pauses", "approval_message", "approver", "parent_pending"]

log = structlog.get_logger("mlwatchd.playbooks")

#: How long an idle worker waits before looking at the outbox again.
_IDLE_S: Final = 0.2
_ERROR_MAX: Final = 300
#: HTTP answers that do not say whether the request was carried out (a gateway
#: timed out waiting for the destination): the attempt's outcome stays unknown.
_NO_ANSWER: Final = frozenset({408, 504})


class Pauses:
    """Destinations paused by a rate limit, until when (shared by the workers)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def pause(self, dest: str, until: float) -> None:
        with self._lock:
            self._until[dest] = max(self._until.get(dest, 0.0), until)

    def now(self) -> set[str]:
        """The destinations paused now (expired pauses are forgotten)."""
        now = self._clock()
        with self._lock:
            for dest in [d for d, until in self._until.items() if until <= now]:
                del self._until[dest]
            return set(self._until)

    def due_count(self, outbox: Outbox) -> int:
        """Jobs running, or due for a first attempt at a destination not paused."""
        now = self._clock()
        with self._lock:
            paused = [d for d, until in self._until.items() if until > now]
        if paused:
            marks = ",".join("?" for _ in paused)
            return outbox.count(
                f"(status = 'running') OR (status = 'pending' AND next_at <= ? "
                f"AND dest NOT IN ({marks}) AND attempts = 0)", now, *paused)
        return outbox.count(
            "status = 'running' OR (status = 'pending' AND next_at <= ? AND attempts = 0)", now)


def approver(outbox: Outbox, job: Mapping[str, Any]) -> str:
    """Who approved this job's action (a revert: the original's); PermanentFailure if nobody."""
    phase, key = str(job["phase"]), str(job["idem_key"])
    if phase == "revert":
        key = key.removesuffix(":revert")
    elif phase not in ("alert", "escalated"):
        return ""  # only alert and escalation ask for approval (see ActionQueue.queue_action)
    with outbox.tx() as db:
        row = db.execute(
            "SELECT decided_by FROM approvals WHERE status = 'approved' AND "
            "decided_by IS NOT NULL AND decided_by != '' AND "
            "json_extract(extra, '$.target_idem') = ? ORDER BY decided_at LIMIT 1",
            (key,)).fetchone()
    if row is None:
        raise PermanentFailure("requires approval, and no approval is recorded for it")
    return str(row["decided_by"])


def approval_message(outbox: Outbox, extra: dict[str, Any]) -> dict[str, Any]:
    """A decision updates the approval message: wait for it to be posted, then use its ts."""
    with outbox.tx() as db:
        row = db.execute("SELECT message_channel, message_ts FROM approvals WHERE id = ?",
                         (extra.get("approval_id"),)).fetchone()
        request = db.execute("SELECT status FROM jobs WHERE idem_key = ?",
                             (f"{extra.get('target_idem')}:approval",)).fetchone()
    if request is not None and request["status"] in ("pending", "running"):
        raise Deferred("the approval request is not posted yet", after=0.5)
    if row is not None and row["message_ts"]:
        return {**extra, "message_ts": row["message_ts"],
                "message_channel": row["message_channel"]}
    return extra


def parent_pending(outbox: Outbox, job: Mapping[str, Any]) -> bool:
    """Is this action's first message of the incident still waiting for delivery?"""
    with outbox.tx() as db:
        return db.execute(
            "SELECT 1 FROM jobs WHERE incident_id = ? AND action = ? AND id != ? AND "
            "phase IN ('alert', 'escalated') AND status IN ('pending', 'running') LIMIT 1",
            (job["incident_id"], job["action"], job["id"])).fetchone() is not None


class Delivery:
    """The worker loop and one attempt per claimed job (see the module docstring)."""

    def __init__(self, playbooks: PlaybookSet, settings: PlaybookSettings, outbox: Outbox,
                 runtime: ActionRuntime, audit: AuditTrail, *, clock: Callable[[], float],
                 wake: threading.Event, redactor: Redactor) -> None:
        self.playbooks = playbooks
        self.settings = settings
        self.outbox = outbox
        self.runtime = runtime
        self.audit = audit
        self.pauses = Pauses(clock)
        self._clock = clock
        self._wake = wake
        self._redactor = redactor
        self._approval_slack = SlackAction("approval", SlackParams.model_validate({}))

    def run(self, stopping: threading.Event) -> None:
        """One worker thread: claim, attempt, repeat until ``stopping``."""
        while not stopping.is_set():
            try:
                job = self.outbox.claim(self._clock(), self.pauses.now())
            except OutboxUnavailable as exc:  # locked by another process: wait, no traceback
                log.warning("playbook_outbox_claim_failed", error=self._redactor.text(str(exc)))
                stopping.wait(1.0)
                continue
            except Exception:
                log.exception("playbook_outbox_claim_failed")
                stopping.wait(1.0)
                continue
            if job is None:
                self._wake.wait(_IDLE_S)
                self._wake.clear()
                continue
            try:
                self.attempt(dict(job))
            except Exception:
                log.exception("playbook_job_crashed", job=job["idem_key"])

    def _resolve(self, job: Mapping[str, Any]) -> tuple[ActionType, BoundAction | None]:
        name = str(job["action"])
        if name.startswith(APPROVAL_PREFIX):
            return self._approval_slack, None
        bound = self.playbooks.actions.get(name)
        if bound is None:
            raise PermanentFailure(f"action {name!r} is no longer in the playbooks")
        return bound.action, bound

    def _available(self, action: ActionType) -> bool:
        if action.name == "slack":
            return self.runtime.slack is not None
        if action.name == "kafka":
            return self.runtime.publish is not None
        return True

    def attempt(self, job: dict[str, Any]) -> None:
        now = self._clock()
        attempts = int(job["attempts"]) + 1
        fields = {"finding_id": "", "route": job["route"], "action": job["action"],
                  "phase": job["phase"], "idempotency_key": job["idem_key"],
                  "attempt": attempts, "incident_id": job["incident_id"]}
        unknown = None
        try:
            finding = decode_finding(job["finding"])
            fields["finding_id"] = finding.finding_id
            action, bound = self._resolve(job)
            fields["action_type"] = action.name
            extra = json.loads(job["extra"])
            unknown = extra.pop("unknown_since", None)
            if bound is not None and bound.requires_approval and not job["dry_run"]:
                # The recorded decision, not the job's own word: a job written into
                # the outbox by anyone else is never published unapproved.
                extra["approved_by"] = approver(self.outbox, job)
            route = self.playbooks.route(job["route"])
            with self.outbox.tx() as db:
                state = self.outbox.state(db, job["incident_id"], job["action"])
            call = ActionCall(
                phase=job["phase"], route=job["route"], action=job["action"], finding=finding,
                idempotency_key=job["idem_key"], incident_id=job["incident_id"],
                incident_count=int(extra.get("count", 1)),
                incident_first_seen=float(extra.get("first_seen", job["created_at"])),
                mitigations=route.spec.mitigations if route else (), state=state, extra=extra,
                dry_run=bool(job["dry_run"]),
                unknown_since=float(unknown) if unknown is not None else None)
            if job["dry_run"]:
                preview = action.preview(call, self.runtime)
                with self.outbox.tx() as db:
                    self.outbox.finish(db, job["id"], "dry_run", now, attempts=0,
                                       result=preview)
                    self.audit.record(db, "action_dry_run", now, outcome="dry_run", **fields,
                                      preview=preview)
                self.audit.event("action_dry_run", **fields)
                return
            if not self._available(action):
                reason = ("slack is not configured" if action.name == "slack"
                          else "no Kafka publisher")
                with self.outbox.tx() as db:
                    self.outbox.finish(db, job["id"], "cancelled", now, attempts=0,
                                       error=reason)
                    self.audit.record(db, "action_skipped", now, outcome="skipped",
                                      reason=reason, **fields)
                self.audit.event("action_skipped", reason=reason, **fields)
                return
            if job["phase"] == "decision":
                extra = approval_message(self.outbox, extra)
                call.extra = extra
            if extra.get("wait_for_thread") and not state.get("ts") and \
                    parent_pending(self.outbox, job):
                raise Deferred("the incident's first message is not delivered yet", after=0.5)
            with self.outbox.tx() as db:
                if unknown is None:  # until this attempt has an answer, it may have landed
                    self.outbox.mark_unknown(db, job["id"], now)
                self.audit.record(db, "action_attempt", now, outcome="attempt", **fields)
            result = action.deliver(call, self.runtime)
        except Deferred as exc:
            self.outbox.reschedule(job["id"], now + exc.after, now, attempts=attempts - 1,
                                   error=exc.reason)
            return
        except RetryLater as exc:
            if unknown is None and exc.status is not None and exc.status not in _NO_ANSWER:
                with self.outbox.tx() as db:  # an answer: this attempt did not land
                    self.outbox.mark_unknown(db, job["id"], None)
            self._retry(job, fields, attempts, now, exc)
            return
        except PermanentFailure as exc:
            self._fail(job, fields, attempts, now, exc.reason, exc.status)
            return
        except Exception as exc:  # a bug in one action must not kill the worker
            log.error("playbook_action_crashed", **fields,
                      error=self._redactor.text(f"{type(exc).__name__}: {exc}"),
                      traceback=self._redactor.text(traceback.format_exc()))
            self._fail(job, fields, attempts, now, f"{type(exc).__name__}: {exc}", None)
            return
        self._delivered(job, call, fields, attempts, now, result)

    def _delivered(self, job: dict[str, Any], call: ActionCall, fields: dict[str, Any],
                   attempts: int, now: float, result: dict[str, Any]) -> None:
        shown = {k: v for k, v in result.items() if k not in ("original",)}
        with self.outbox.tx() as db:
            self.outbox.finish(db, job["id"], "delivered", now, attempts=attempts, result=shown)
            if result.get("ts") and call.phase in ("alert", "escalated") \
                    and not call.state.get("ts"):
                self.outbox.set_state(db, job["incident_id"], job["action"],
                                      {"ts": result["ts"], "channel": result.get("channel")})
            if call.phase == "approval" and result.get("ts"):
                db.execute("UPDATE approvals SET message_channel = ?, message_ts = ? "
                           "WHERE id = ?", (result.get("channel"), result["ts"],
                                            call.extra.get("approval_id")))
            if result.get("revert_after"):
                self.outbox.add_job(
                    db, idem_key=f"{job['idem_key']}:revert", route=job["route"],
                    action=job["action"], phase="revert", dest=job["dest"],
                    incident_id=job["incident_id"], finding=job["finding"],
                    extra={"original": result["original"], "count": call.incident_count,
                           "first_seen": call.incident_first_seen},
                    dry_run=False, now=now, next_at=now + float(result["revert_after"]))
            self.audit.record(db, "action_delivered", now, outcome="delivered", **fields,
                              result=shown)
        log.info("action_delivered", **fields)
        self.audit.event("action_delivered", **fields)

    def _retry(self, job: dict[str, Any], fields: dict[str, Any], attempts: int, now: float,
               exc: RetryLater) -> None:
        s = self.settings
        if attempts >= s.max_attempts or now - float(job["created_at"]) >= s.give_up_after:
            self._fail(job, fields, attempts, now, f"gave up: {exc.reason}", exc.status)
            return
        reason = self._redactor.text(exc.reason)[:_ERROR_MAX]
        if exc.after is not None:
            wait = min(exc.after, s.retry_after_max) + random.uniform(0.0, 0.1)
            self.pauses.pause(job["dest"], now + wait)  # the whole destination waits it out
        else:
            base = min(s.retry_backoff_max, s.retry_backoff * 2 ** (attempts - 1))
            wait = base + random.uniform(0.0, base / 4)
        self.outbox.reschedule(job["id"], now + wait, now, attempts=attempts, error=reason)
        self.audit.record_now("action_retry", now, outcome="retry", **fields, status=exc.status,
                              error=reason, retry_in_s=round(wait, 3))
        log.warning("action_retry", **fields, status=exc.status, error=reason,
                    retry_in_s=round(wait, 3))
        self.audit.event("action_retry", **fields, status=exc.status)

    def _fail(self, job: dict[str, Any], fields: dict[str, Any], attempts: int, now: float,
              reason: str, status: int | None) -> None:
        reason = self._redactor.text(reason)
        with self.outbox.tx() as db:
            self.outbox.finish(db, job["id"], "failed", now, attempts=attempts,
                               error=reason[:_ERROR_MAX])
            self.audit.record(db, "action_failed", now, outcome="failed", **fields,
                              status=status, error=reason[:_ERROR_MAX])
        log.error("action_failed", **fields, status=status, error=reason[:_ERROR_MAX])
        self.audit.event("action_failed", **fields, status=status, error=reason[:_ERROR_MAX])
