"""The response engine: findings in, playbook actions out, durably and audited.

Interface the daemon calls (arrows point daemon -> playbooks)::

    playbooks = load_playbooks(settings.playbooks.dir)          # PlaybookError: one line each
    for line in playbook_warnings(playbooks, settings.playbooks,
                                  slack_configured=settings.slack.enabled):
        ...                                                     # check-config: print; run: log
    engine = ResponseEngine(
        playbooks, settings.playbooks,
        slack=settings.slack,                # SlackSettings, a SlackConnection or None
        pseudonymizer=pseudonymizer,         # Pseudonymizer or None
        publish=publish,                     # publish(topic, key, value, headers); raises
        on_event=on_event,                   # on_event(name, fields), e.g. for metrics
    )
    engine.start()
    engine.submit(finding)                   # for every finding, after it was acknowledged
    status, body = engine.handle_slack_interaction(headers, raw_body)   # POST /slack/interactions
    undelivered = engine.stop(timeout=10.0)

``submit`` never waits on the network: it matches routes (in memory) and
records the outcome in the outbox (one short local SQLite transaction). Worker
threads deliver the outbox's due jobs, each attempt once; failures are retried
with exponential backoff (429 Retry-After honoured, and the whole destination
pauses for it) up to ``max_attempts`` / ``give_up_after``, then reported
(audit record, ``action_failed`` log line, ``on_event``). A timer thread runs
:meth:`ResponseEngine.tick` every ``tick_interval``: repeat summaries,
resolved notices, escalations and approval expiry (TTL reverts are outbox jobs
scheduled in the future). A third thread publishes the audit trail.

Lifecycle per route and dedup key (an *incident*): the first finding runs the
route's actions (``alert``); later findings within ``dedup.window`` only count,
and at most every ``realert`` a summary ("N more in the last M minutes") goes
out (``repeat``), threaded under the first Slack message with a bot token; a
more severe finding alerts again at once. No matching finding for
``dedup.window`` closes the incident (``resolved`` notice). Not acknowledged
(Slack button) within ``escalation.after``: the escalation route's actions run
(``escalated``). Actions with ``requires_approval`` post Approve / Deny first.

Events passed to ``on_event(name, fields)``: ``action_delivered``,
``action_retry``, ``action_failed``, ``action_dry_run``, ``action_skipped``,
``approval_requested``, ``approval_approved``, ``approval_denied``,
``approval_expired``, ``incident_opened``, ``incident_repeat``,
``incident_resolved``, ``incident_escalated``, ``incident_acknowledged``,
``finding_duplicate``, ``finding_unmatched``, ``submit_failed``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

from detectors.findings import Finding, decode_finding, encode_finding, severity_at_least
from playbooks.actions import (
    ActionCall,
    ActionRuntime,
    ActionType,
    Publish,
    SlackAction,
    SlackParams,
)
from playbooks.config import PlaybookSettings, SlackConnection
from playbooks.interactivity import ACK, APPROVE, Click, parse_clicks, verify_signature
from playbooks.model import BoundAction, PlaybookSet, Route
from playbooks.outbox import Outbox
from playbooks.outcomes import Deferred, PermanentFailure, RetryLater
from playbooks.privacy import Pseudonymizer
from playbooks.slack_post import SlackPoster

__all__ = ["OnEvent", "ResponseEngine", "playbook_warnings"]

OnEvent = Callable[[str, dict[str, Any]], None]

log = structlog.get_logger("mlwatchd.playbooks")

#: How long an idle worker waits before looking at the outbox again.
_IDLE_S: Final = 0.2
_ERROR_MAX: Final = 300
#: Internal action names: approval requests and their updates go through Slack.
_APPROVAL_PREFIX: Final = "approval:"


def _rfc3339(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def playbook_warnings(playbooks: PlaybookSet, settings: PlaybookSettings, *,
                      slack_configured: bool, publisher: bool = True) -> list[str]:
    """What will not work with this config (for ``check-config`` and the start log)."""
    lines = []
    types = {b.action.name for b in playbooks.actions.values()}
    approvals = sorted(b.name for b in playbooks.actions.values() if b.requires_approval)
    if "slack" in types and not slack_configured:
        lines.append("slack actions are skipped: slack is not configured")
    if approvals and not slack_configured:
        lines.append(f"approval requests cannot be posted (no Slack): {', '.join(approvals)} "
                     "will never run")
    elif approvals and not settings.interactivity.enabled:
        lines.append(f"playbooks.interactivity is off: approvals for {', '.join(approvals)} "
                     "can only expire")
    if "kafka" in types and not publisher:
        lines.append("kafka actions are skipped: no publisher")
    if settings.dry_run:
        lines.append("playbooks.dry_run is on: actions are audited, never sent")
    return lines


class ResponseEngine:
    """Runs playbooks for findings; see the module docstring for the contract."""

    def __init__(
        self,
        playbooks: PlaybookSet,
        settings: PlaybookSettings,
        *,
        slack: Any = None,
        pseudonymizer: Pseudonymizer | None = None,
        publish: Publish | None = None,
        on_event: OnEvent | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.playbooks = playbooks
        self.settings = settings
        self._clock = clock
        self._on_event = on_event
        self._publish = publish
        connection = SlackConnection.from_settings(slack)
        poster = SlackPoster(connection) if connection is not None else None
        inter = settings.interactivity
        self._signing_secret = (inter.signing_secret.get_secret_value().encode()
                                if inter.enabled and inter.signing_secret else b"")
        self.runtime = ActionRuntime(
            slack=poster,
            publish=publish,
            actions_topic=settings.actions_topic,
            interactivity=bool(self._signing_secret),
            pseudonymizer=pseudonymizer if settings.pseudonymize else None,
            clock=clock,
        )
        self._approval_slack = SlackAction("approval", SlackParams.model_validate({}))
        self.outbox = Outbox(settings.outbox_path)
        self._closed = False
        self._stopping = threading.Event()
        self._stopped: int | None = None
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._paused: dict[str, float] = {}
        self._paused_lock = threading.Lock()
        self._purged_at = 0.0
        self._warn_unavailable()

    def __repr__(self) -> str:
        return (f"ResponseEngine({self.playbooks.summary()}, dry_run={self.settings.dry_run}, "
                f"outbox={str(self.settings.outbox_path)!r})")

    def _warn_unavailable(self) -> None:
        """Say at start which configured actions cannot work, not at the first finding."""
        for line in playbook_warnings(self.playbooks, self.settings,
                                      slack_configured=self.runtime.slack is not None,
                                      publisher=self._publish is not None):
            log.warning("playbooks_degraded", detail=line)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start the workers, the timer and the audit publisher (daemon threads)."""
        if self._threads or self._closed:
            raise RuntimeError("ResponseEngine can be started once, before stop()")
        recovered = self.outbox.recover_running()
        if recovered:
            log.warning("playbook_jobs_recovered", count=recovered,
                        detail="in flight when the previous process stopped; retried")
        for i in range(self.settings.workers):
            self._threads.append(threading.Thread(target=self._work, name=f"mlwatchd-action-{i}",
                                                  daemon=True))
        self._threads.append(threading.Thread(target=self._timer, name="mlwatchd-playbook-timer",
                                              daemon=True))
        self._audit_thread = threading.Thread(target=self._audit_loop,
                                              name="mlwatchd-audit", daemon=True)
        for thread in self._threads:
            thread.start()
        self._audit_thread.start()
        log.info("playbooks_started", routes=len(self.playbooks.routes),
                 actions=len(self.playbooks.actions), dry_run=self.settings.dry_run,
                 workers=self.settings.workers)

    def stop(self, timeout: float = 10.0) -> int:
        """Deliver what is due within ``timeout``; return how many actions were not.

        New findings are refused from here on. Nothing is lost either way:
        undelivered jobs stay in the outbox and the next start delivers them.
        Scheduled TTL reverts are not counted (they are not due).
        """
        if self._stopped is not None:
            return self._stopped
        deadline = time.monotonic() + max(0.0, timeout)
        self._closed = True
        self._wake.set()
        while self._threads and time.monotonic() < deadline and self._due_count() > 0:
            time.sleep(0.05)
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        audit = getattr(self, "_audit_thread", None)
        if audit is not None:
            audit.join(max(0.2, deadline - time.monotonic()))
        undelivered = self.outbox.count(
            "status IN ('pending', 'running') AND (phase != 'revert' OR next_at <= ?)",
            self._clock())
        if undelivered:
            log.warning("playbook_actions_undelivered_at_stop", count=undelivered,
                        detail="kept in the outbox; delivered after the next start")
        self.outbox.close()
        self._stopped = undelivered
        return undelivered

    def _due_count(self) -> int:
        now = self._clock()
        with self._paused_lock:
            paused = [d for d, until in self._paused.items() if until > now]
        if paused:
            marks = ",".join("?" for _ in paused)
            return self.outbox.count(
                f"(status = 'running') OR (status = 'pending' AND next_at <= ? "
                f"AND dest NOT IN ({marks}) AND attempts = 0)", now, *paused)
        return self.outbox.count(
            "status = 'running' OR (status = 'pending' AND next_at <= ? AND attempts = 0)", now)

    # -- intake ----------------------------------------------------------------

    def submit(self, finding: Finding) -> None:
        """Match ``finding`` against the routes and queue the resulting actions."""
        if self._closed:
            log.warning("playbook_finding_refused", finding_id=finding.finding_id,
                        reason="stopped")
            self._event("submit_failed", finding_id=finding.finding_id, reason="stopped")
            return
        routes = list(self.playbooks.matching(finding))
        if not routes:
            self._event("finding_unmatched", finding_id=finding.finding_id, kind=finding.kind)
            return
        now = self._clock()
        try:
            encoded = encode_finding(finding)
            with self.outbox.tx() as db:
                for route in routes:
                    self._intake(db, route, finding, encoded, now)
        except Exception as exc:  # the consumer loop must never die of a response problem
            log.exception("playbook_submit_failed", finding_id=finding.finding_id)
            self._event("submit_failed", finding_id=finding.finding_id,
                        reason=type(exc).__name__)
            return
        self._wake.set()

    def _intake(self, db: Any, route: Route, finding: Finding, encoded: bytes,
                now: float) -> None:
        spec = route.spec
        fid = finding.finding_id
        if db.execute("INSERT OR IGNORE INTO seen (route, finding_id, at) VALUES (?, ?, ?)",
                      (route.name, fid, now)).rowcount == 0:
            self._event("finding_duplicate", finding_id=fid, route=route.name)
            return
        # Other replicas read this from the audit topic (daemon.response.PeerSeen):
        # a finding re-emitted elsewhere after a partition moved is not re-alerted.
        self._audit(db, "finding_received", now, finding_id=fid, route=route.name)
        call = ActionCall("alert", route.name, "", finding, "")
        key = spec.dedup.key.render(call.context(None, outside=False))
        row = db.execute("SELECT * FROM incidents WHERE route = ? AND dedup_key = ? AND "
                         "status = 'open'", (route.name, key)).fetchone()
        continued = self._continued_incident(db, route.name, key, finding)
        row = continued if continued is not None else row
        if continued is None and row is not None and now - row["last_seen"] > spec.dedup.window:
            self._close_incident(db, row, now)  # the timer has not got to it yet
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
            self._audit(db, "incident_opened", now, finding_id=fid, route=route.name,
                        incident_id=incident_id)
            self._event("incident_opened", finding_id=fid, route=route.name,
                        incident_id=incident_id)
            self._run_route(db, route, "alert", finding, encoded, incident_id, now,
                            count=1, first_seen=now)
            return
        count = row["count"] + 1
        if not severity_at_least(row["max_severity"], finding.severity):
            # More severe than anything so far in this incident: alert again now.
            db.execute("UPDATE incidents SET count = ?, last_seen = ?, last_notice = ?, "
                       "pending_repeats = 0, max_severity = ? WHERE id = ?",
                       (count, now, now, finding.severity, row["id"]))
            self._run_route(db, route, "alert", finding, encoded, row["id"], now, count=count,
                            first_seen=row["opened_at"],
                            extra={"repeats": row["pending_repeats"], "wait_for_thread": True})
            return
        db.execute("UPDATE incidents SET count = ?, last_seen = ?, "
                   "pending_repeats = pending_repeats + 1 WHERE id = ?",
                   (count, now, row["id"]))

    @staticmethod
    def _continued_incident(db: Any, route: str, key: str, finding: Finding) -> Any:
        """The route's latest incident for ``key``, reopened if closed, when ``finding``
        is a detector incident's update (``incident.seq`` > 1, not an escalation):
        it is a repeat of that incident even after ``dedup.window``, never a new alert.
        None otherwise (and when no incident for the key is left)."""
        inc = finding.incident
        if inc is None or inc.seq <= 1 or inc.escalated:
            return None
        row = db.execute("SELECT * FROM incidents WHERE route = ? AND dedup_key = ? "
                         "ORDER BY status = 'open' DESC, opened_at DESC LIMIT 1",
                         (route, key)).fetchone()
        if row is None or row["status"] == "open":
            return row
        db.execute("UPDATE incidents SET status = 'open', closed_at = NULL WHERE id = ?",
                   (row["id"],))
        return db.execute("SELECT * FROM incidents WHERE id = ?", (row["id"],)).fetchone()

    def mark_seen(self, route: str, finding_id: str, at: float) -> bool:
        """Record that another replica took ``finding_id`` on ``route``; True if new here."""
        with self.outbox.tx() as db:
            return bool(db.execute(
                "INSERT OR IGNORE INTO seen (route, finding_id, at) VALUES (?, ?, ?)",
                (route, finding_id, at)).rowcount)

    def _run_route(self, db: Any, route: Route, phase: str, finding: Finding, encoded: bytes,
                   incident_id: str, now: float, *, count: int, first_seen: float,
                   extra: Mapping[str, Any] | None = None, suffix: str = "") -> None:
        """Queue ``phase`` for every action of ``route`` that acts on it."""
        for name in route.spec.actions:
            bound = self.playbooks.actions[name]
            if not bound.action.handles(phase):
                continue
            self._queue_action(db, route, bound, phase, finding, encoded, incident_id, now,
                               count=count, first_seen=first_seen, extra=dict(extra or {}),
                               suffix=suffix)

    def _idem(self, finding_id: str, route: str, action: str, phase: str, suffix: str) -> str:
        """Idempotency key: finding id + route + action (+ phase and a counter after alert)."""
        key = f"{finding_id}:{route}:{action}"
        if phase != "alert":
            key += f":{phase}"
        return key + (f":{suffix}" if suffix else "")

    def _queue_action(self, db: Any, route: Route, bound: BoundAction, phase: str,
                      finding: Finding, encoded: bytes, incident_id: str, now: float, *,
                      count: int, first_seen: float, extra: dict[str, Any],
                      suffix: str = "") -> None:
        dry = self.settings.dry_run or route.spec.dry_run or bound.dry_run
        idem = self._idem(finding.finding_id, route.name, bound.name, phase, suffix)
        if bound.requires_approval and phase in ("alert", "escalated") and not dry:
            self._request_approval(db, route, bound, phase, finding, encoded, incident_id, now,
                                   count=count, first_seen=first_seen, extra=extra, idem=idem)
            return
        if dry and bound.requires_approval:
            extra = {**extra, "would_request_approval": True}
        added = self.outbox.add_job(
            db, idem_key=idem, route=route.name, action=bound.name, phase=phase,
            dest=bound.action.destination(), incident_id=incident_id, finding=encoded,
            extra={**extra, "count": count, "first_seen": first_seen}, dry_run=dry, now=now)
        if not added:
            self._event("finding_duplicate", finding_id=finding.finding_id, route=route.name,
                        action=bound.name)

    def _request_approval(self, db: Any, route: Route, bound: BoundAction, phase: str,
                          finding: Finding, encoded: bytes, incident_id: str, now: float, *,
                          count: int, first_seen: float, extra: dict[str, Any],
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
                action=_APPROVAL_PREFIX + bound.name, phase="approval", dest="slack",
                incident_id=incident_id, finding=encoded, extra=details, dry_run=False, now=now):
            return  # already requested (or already run) for this finding
        db.execute(
            "INSERT INTO approvals (id, route, action, incident_id, finding, extra, created_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (approval_id, route.name, bound.name, incident_id, encoded, json.dumps(details),
             now, expires))
        self._audit(db, "approval_requested", now, finding_id=finding.finding_id,
                    route=route.name, action=bound.name, action_type=bound.action.name,
                    approval_id=approval_id, idempotency_key=idem)
        self._event("approval_requested", finding_id=finding.finding_id, route=route.name,
                    action=bound.name)

    # -- delivery ----------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.outbox.claim(self._clock(), self._paused_now())
            except Exception:
                log.exception("playbook_outbox_claim_failed")
                self._stopping.wait(1.0)
                continue
            if job is None:
                self._wake.wait(_IDLE_S)
                self._wake.clear()
                continue
            try:
                self._attempt(dict(job))
            except Exception:
                log.exception("playbook_job_crashed", job=job["idem_key"])

    def _paused_now(self) -> set[str]:
        now = self._clock()
        with self._paused_lock:
            for dest in [d for d, until in self._paused.items() if until <= now]:
                del self._paused[dest]
            return set(self._paused)

    def _resolve(self, job: Mapping[str, Any]) -> tuple[ActionType, BoundAction | None]:
        name = str(job["action"])
        if name.startswith(_APPROVAL_PREFIX):
            return self._approval_slack, None
        bound = self.playbooks.actions.get(name)
        if bound is None:
            raise PermanentFailure(f"action {name!r} is no longer in the playbooks")
        return bound.action, bound

    def _attempt(self, job: dict[str, Any]) -> None:
        now = self._clock()
        attempts = int(job["attempts"]) + 1
        fields = {"finding_id": "", "route": job["route"], "action": job["action"],
                  "phase": job["phase"], "idempotency_key": job["idem_key"],
                  "attempt": attempts, "incident_id": job["incident_id"]}
        try:
            finding = decode_finding(job["finding"])
            fields["finding_id"] = finding.finding_id
            action, _bound = self._resolve(job)
            fields["action_type"] = action.name
            extra = json.loads(job["extra"])
            route = self.playbooks.route(job["route"])
            with self.outbox.tx() as db:
                state = self.outbox.state(db, job["incident_id"], job["action"])
            call = ActionCall(
                phase=job["phase"], route=job["route"], action=job["action"], finding=finding,
                idempotency_key=job["idem_key"], incident_id=job["incident_id"],
                incident_count=int(extra.get("count", 1)),
                incident_first_seen=float(extra.get("first_seen", job["created_at"])),
                mitigations=route.spec.mitigations if route else (), state=state, extra=extra,
                dry_run=bool(job["dry_run"]))
            if job["dry_run"]:
                preview = action.preview(call, self.runtime)
                with self.outbox.tx() as db:
                    self.outbox.finish(db, job["id"], "dry_run", now, attempts=0,
                                       result=preview)
                    self._audit(db, "action_dry_run", now, outcome="dry_run", **fields,
                                preview=preview)
                self._event("action_dry_run", **fields)
                return
            if not self._available(action):
                reason = ("slack is not configured" if action.name == "slack"
                          else "no Kafka publisher")
                with self.outbox.tx() as db:
                    self.outbox.finish(db, job["id"], "cancelled", now, attempts=0,
                                       error=reason)
                    self._audit(db, "action_skipped", now, outcome="skipped", reason=reason,
                                **fields)
                self._event("action_skipped", reason=reason, **fields)
                return
            if job["phase"] == "decision":
                extra = self._with_approval_message(extra)
                call.extra = extra
            if extra.get("wait_for_thread") and not state.get("ts") and self._parent_pending(job):
                raise Deferred("the incident's first message is not delivered yet", after=0.5)
            self._audit_now("action_attempt", now, outcome="attempt", **fields)
            result = action.deliver(call, self.runtime)
        except Deferred as exc:
            self.outbox.reschedule(job["id"], now + exc.after, now, attempts=attempts - 1,
                                   error=exc.reason)
            return
        except RetryLater as exc:
            self._retry(job, fields, attempts, now, exc)
            return
        except PermanentFailure as exc:
            self._fail(job, fields, attempts, now, exc.reason, exc.status)
            return
        except Exception as exc:  # a bug in one action must not kill the worker
            log.exception("playbook_action_crashed", **fields)
            self._fail(job, fields, attempts, now, f"{type(exc).__name__}: {exc}"[:_ERROR_MAX],
                       None)
            return
        self._delivered(job, call, fields, attempts, now, result)

    def _with_approval_message(self, extra: dict[str, Any]) -> dict[str, Any]:
        """A decision updates the approval message: wait for it to be posted, then use its ts."""
        with self.outbox.tx() as db:
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

    def _parent_pending(self, job: Mapping[str, Any]) -> bool:
        """Is this action's first message of the incident still waiting for delivery?"""
        with self.outbox.tx() as db:
            return db.execute(
                "SELECT 1 FROM jobs WHERE incident_id = ? AND action = ? AND id != ? AND "
                "phase IN ('alert', 'escalated') AND status IN ('pending', 'running') LIMIT 1",
                (job["incident_id"], job["action"], job["id"])).fetchone() is not None

    def _available(self, action: ActionType) -> bool:
        if action.name == "slack":
            return self.runtime.slack is not None
        if action.name == "kafka":
            return self._publish is not None
        return True

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
            self._audit(db, "action_delivered", now, outcome="delivered", **fields, result=shown)
        log.info("action_delivered", **fields)
        self._event("action_delivered", **fields)

    def _retry(self, job: dict[str, Any], fields: dict[str, Any], attempts: int, now: float,
               exc: RetryLater) -> None:
        s = self.settings
        if attempts >= s.max_attempts or now - float(job["created_at"]) >= s.give_up_after:
            self._fail(job, fields, attempts, now, f"gave up: {exc.reason}", exc.status)
            return
        if exc.after is not None:
            wait = min(exc.after, s.retry_after_max) + random.uniform(0.0, 0.1)
            with self._paused_lock:  # the whole destination waits out a rate limit
                self._paused[job["dest"]] = max(self._paused.get(job["dest"], 0.0), now + wait)
        else:
            base = min(s.retry_backoff_max, s.retry_backoff * 2 ** (attempts - 1))
            wait = base + random.uniform(0.0, base / 4)
        self.outbox.reschedule(job["id"], now + wait, now, attempts=attempts,
                               error=exc.reason[:_ERROR_MAX])
        self._audit_now("action_retry", now, outcome="retry", **fields, status=exc.status,
                        error=exc.reason[:_ERROR_MAX], retry_in_s=round(wait, 3))
        log.warning("action_retry", **fields, status=exc.status, error=exc.reason[:_ERROR_MAX],
                    retry_in_s=round(wait, 3))
        self._event("action_retry", **fields, status=exc.status)

    def _fail(self, job: dict[str, Any], fields: dict[str, Any], attempts: int, now: float,
              reason: str, status: int | None) -> None:
        with self.outbox.tx() as db:
            self.outbox.finish(db, job["id"], "failed", now, attempts=attempts,
                               error=reason[:_ERROR_MAX])
            self._audit(db, "action_failed", now, outcome="failed", **fields, status=status,
                        error=reason[:_ERROR_MAX])
        log.error("action_failed", **fields, status=status, error=reason[:_ERROR_MAX])
        self._event("action_failed", **fields, status=status, error=reason[:_ERROR_MAX])

    # -- timers ----------------------------------------------------------------

    def _timer(self) -> None:
        interval = max(0.05, self.settings.tick_interval)
        while not self._stopping.wait(interval):
            try:
                self.tick()
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
                    self._close_incident(db, row, now)
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
                self._decide(db, row, "expired", None, now)
                queued = True
        if now - self._purged_at > 3600:
            self._purged_at = now
            self.outbox.purge(now - self.settings.retention)
        if queued:
            self._wake.set()

    def _incident_finding(self, row: Any) -> tuple[Finding, bytes]:
        raw = bytes(row["first_finding"])
        return decode_finding(raw), raw

    def _repeat_notice(self, db: Any, route: Route, row: Any, now: float) -> None:
        finding, raw = self._incident_finding(row)
        pending = int(row["pending_repeats"])
        headline = f"{pending} more in the last {_minutes(now - row['last_notice'])}"
        db.execute("UPDATE incidents SET pending_repeats = 0, last_notice = ? WHERE id = ?",
                   (now, row["id"]))
        self._run_route(db, route, "repeat", finding, raw, row["id"], now, count=row["count"],
                        first_seen=row["opened_at"], suffix=str(row["count"]),
                        extra={"headline": headline, "repeats": pending,
                               "detail": f"{row['count']} findings since "
                                         f"{_rfc3339(row['opened_at'])}",
                               "wait_for_thread": True})
        self._audit(db, "incident_repeat", now, finding_id=finding.finding_id,
                    route=route.name, incident_id=row["id"], repeats=pending)
        self._event("incident_repeat", route=route.name, incident_id=row["id"], repeats=pending)

    def _close_incident(self, db: Any, row: Any, now: float) -> None:
        route = self.playbooks.route(row["route"])
        if route is not None and row["pending_repeats"] > 0:
            self._repeat_notice(db, route, row, now)  # counted repeats are never dropped
        db.execute("UPDATE incidents SET status = 'closed', closed_at = ? WHERE id = ?",
                   (now, row["id"]))
        finding, raw = self._incident_finding(row)
        if route is not None and route.spec.resolve.notify:
            quiet = _minutes(route.spec.dedup.window)
            extra = {"headline": "Resolved",
                     "detail": f"no matching finding for {quiet}; {row['count']} finding"
                               f"{'s' if row['count'] != 1 else ''} in this incident",
                     "wait_for_thread": True}
            self._run_route(db, route, "resolved", finding, raw, row["id"], now,
                            count=row["count"], first_seen=row["opened_at"], extra=extra)
            esc = route.spec.escalation
            if row["escalated"] and esc is not None:
                target = self.playbooks.route(esc.route)
                if target is not None:
                    self._run_route(db, target, "resolved", finding, raw, row["id"], now,
                                    count=row["count"], first_seen=row["opened_at"],
                                    extra=extra)
        self._audit(db, "incident_resolved", now, finding_id=finding.finding_id,
                    route=row["route"], incident_id=row["id"], count=row["count"])
        self._event("incident_resolved", route=row["route"], incident_id=row["id"],
                    count=row["count"])

    def _escalate(self, db: Any, route: Route, row: Any, now: float) -> None:
        esc = route.spec.escalation
        assert esc is not None
        target = self.playbooks.route(esc.route)
        db.execute("UPDATE incidents SET escalated = 1 WHERE id = ?", (row["id"],))
        finding, raw = self._incident_finding(row)
        after = _minutes(esc.after)
        common = {"count": row["count"], "first_seen": row["opened_at"]}
        self._run_route(db, route, "escalated", finding, raw, row["id"], now, **common,
                        extra={"headline": f"Escalated to {esc.route}",
                               "detail": f"not acknowledged within {after}",
                               "wait_for_thread": True})
        if target is not None:
            self._run_route(db, target, "escalated", finding, raw, row["id"], now, **common,
                            extra={"headline": f"Escalated from {route.name}",
                                   "detail": f"not acknowledged within {after}",
                                   "repeats": row["count"] - 1})
        self._audit(db, "incident_escalated", now, finding_id=finding.finding_id,
                    route=route.name, incident_id=row["id"], to_route=esc.route)
        self._event("incident_escalated", route=route.name, incident_id=row["id"],
                    to_route=esc.route)

    # -- Slack interactivity ---------------------------------------------------

    def handle_slack_interaction(self, headers: Mapping[str, str], body: bytes
                                 ) -> tuple[int, bytes]:
        """Slack's POST to the interactivity URL -> (HTTP status, body).

        401 for a missing/bad/stale signature (nothing runs), 403 for a user
        not in ``allowed_users``, 400 for a malformed payload, 404 when
        interactivity is off; otherwise 200 (also for an already-decided
        approval, which stays decided).
        """
        inter = self.settings.interactivity
        if not self._signing_secret:
            return 404, b"interactivity is off"
        now = self._clock()
        if not verify_signature(self._signing_secret, headers, body, now=now,
                                max_age_s=inter.max_age_s):
            log.warning("slack_interaction_rejected", reason="bad or stale signature")
            self._event("interaction_rejected", reason="signature")
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
                    self._audit(db, "interaction_forbidden", now, user=click.user_id,
                                action_id=click.action_id)
                self._event("interaction_rejected", reason="user", user=click.user_id)
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
            self._decide(db, row, verdict, click.user_id, now)

    def _acknowledge(self, db: Any, click: Click, now: float) -> None:
        row = db.execute("SELECT * FROM incidents WHERE id = ?", (click.value,)).fetchone()
        if row is None or row["acked_at"] is not None or row["status"] != "open":
            return
        db.execute("UPDATE incidents SET acked_at = ?, acked_by = ? WHERE id = ?",
                   (now, click.user_id, row["id"]))
        route = self.playbooks.route(row["route"])
        finding, raw = self._incident_finding(row)
        if route is not None:
            self._run_route(db, route, "acknowledged", finding, raw, row["id"], now,
                            count=row["count"], first_seen=row["opened_at"],
                            extra={"headline": "Acknowledged",
                                   "detail": f"by Slack user {click.user_id}",
                                   "wait_for_thread": True})
        self._audit(db, "incident_acknowledged", now, finding_id=finding.finding_id,
                    route=row["route"], incident_id=row["id"], user=click.user_id)
        self._event("incident_acknowledged", route=row["route"], incident_id=row["id"],
                    user=click.user_id)

    def _decide(self, db: Any, row: Any, verdict: str, user: str | None, now: float) -> None:
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
        self._audit(db, f"approval_{verdict}", now, finding_id=finding.finding_id,
                    route=row["route"], action=row["action"], approval_id=row["id"],
                    user=user)
        log.info(f"approval_{verdict}", finding_id=finding.finding_id, route=row["route"],
                 action=row["action"], user=user)
        self._event(f"approval_{verdict}", finding_id=finding.finding_id, route=row["route"],
                    action=row["action"], user=user)
        if row["message_ts"] or self.runtime.slack is not None:
            headline = {"approved": "Approved", "denied": "Denied",
                        "expired": "Expired (nobody decided)"}[verdict]
            self.outbox.add_job(
                db, idem_key=f"{details['target_idem']}:decision", route=row["route"],
                action=_APPROVAL_PREFIX + row["action"], phase="decision", dest="slack",
                incident_id=row["incident_id"], finding=raw,
                extra={**details, "headline": headline, "user": user,
                       "message_ts": row["message_ts"], "message_channel":
                           row["message_channel"], "wait_for_thread": False},
                dry_run=False, now=now)

    # -- audit -----------------------------------------------------------------

    def _audit_record(self, event: str, now: float, fields: dict[str, Any]) -> bytes:
        record = {"schema": "mlwatchd.audit/v1", "ts": _rfc3339(now), "event": event,
                  **{k: v for k, v in fields.items() if v is not None}}
        return json.dumps(record, separators=(",", ":"), default=str).encode()

    def _audit(self, db: Any, event: str, now: float, **fields: Any) -> None:
        """Log it and queue it for the audit topic, in the caller's transaction."""
        log.info("playbook_audit", audit_event=event,
                 **{k: v for k, v in fields.items() if k not in ("preview", "result")})
        if self._publish is not None:
            self.outbox.add_audit(db, fields.get("finding_id") or None,
                                  self._audit_record(event, now, fields), now)

    def _audit_now(self, event: str, now: float, **fields: Any) -> None:
        with self.outbox.tx() as db:
            self._audit(db, event, now, **fields)

    def _audit_loop(self) -> None:
        backoff = 0.5
        publish = self._publish
        while publish is not None:
            stopping = self._stopping.is_set()
            try:
                rows = self.outbox.audit_batch()
            except Exception:
                if stopping:
                    return
                self._stopping.wait(1.0)
                continue
            if not rows:
                if stopping:
                    return
                self._stopping.wait(0.2)
                continue
            done: list[int] = []
            try:
                for row in rows:
                    key = row["key"].encode() if row["key"] else None
                    event = json.loads(row["payload"]).get("event", "")
                    publish(self.settings.audit_topic, key, bytes(row["payload"]),
                            [("mlwatchd-audit", str(event).encode())])
                    done.append(row["id"])
                backoff = 0.5
            except Exception as exc:
                log.warning("audit_publish_failed", error=f"{type(exc).__name__}",
                            retry_in_s=backoff)
                if stopping:
                    return
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                try:
                    self.outbox.audit_done(done)
                except Exception:  # closed by stop() while a publish hung
                    return

    def _event(self, name: str, **fields: Any) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(name, fields)
        except Exception:  # a broken metrics hook must not stop responding
            log.exception("playbook_event_callback_failed", event_name=name)
