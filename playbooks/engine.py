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

Parts, each testable alone and joined by the typed objects passed to their
constructors (the engine below only wires them and owns the threads)::

    audit.AuditTrail        audit records (log + outbox + publisher loop), on_event hook
    queueing.ActionQueue    a route's actions for one phase -> outbox jobs (idempotent)
    intake.Intake           submit(): route matching, dedup, incidents opened and counted
    incidents.Incidents     timer: repeats, resolved notices, escalations, approval expiry
    approvals.Approvals     Slack clicks: acknowledge, approve / deny, decision messages
    delivery.Delivery       workers: one attempt per due job, retry/pause/fail/report
    protocol.ResponseSide   what the daemon sees of all this (start/submit/stop/clicks)

Events passed to ``on_event(name, fields)``: ``action_delivered``,
``action_retry``, ``action_failed``, ``action_dry_run``, ``action_skipped``,
``approval_requested``, ``approval_approved``, ``approval_denied``,
``approval_expired``, ``incident_opened``, ``incident_repeat``,
``incident_resolved``, ``incident_escalated``, ``incident_acknowledged``,
``finding_duplicate``, ``finding_unmatched``, ``submit_failed``.

``submit`` raises :class:`~playbooks.outbox.OutboxUnavailable` when the
outbox cannot record the finding (locked by another process beyond the short
busy timeout, disk full): the caller must not treat the finding as taken
(the daemon does not commit the batch and submits again). An action that
``requires_approval`` is delivered only with an approver recorded in the
outbox's approvals (checked at delivery, whatever the job says). Configured
secrets are masked by value (:mod:`playbooks.redact`) in everything the
engine logs, audits or stores as an error.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import structlog

from detectors.findings import Finding
from playbooks.actions import ActionRuntime, Publish
from playbooks.adoption import adopt_orphans
from playbooks.approvals import Approvals
from playbooks.audit import AuditTrail, OnEvent
from playbooks.config import PlaybookSettings, SlackConnection
from playbooks.delivery import Delivery
from playbooks.incidents import Incidents
from playbooks.intake import INTAKE_WAIT_S, Intake
from playbooks.model import PlaybookSet
from playbooks.outbox import Outbox, OutboxUnavailable, UnsafeStateFile
from playbooks.privacy import Pseudonymizer
from playbooks.queueing import ActionQueue
from playbooks.redact import REDACTOR
from playbooks.slack_post import SlackPoster

__all__ = ["OnEvent", "ResponseEngine", "playbook_warnings"]

#: How often orphaned outboxes are looked for (``playbooks.adopt_outboxes``).
_ADOPT_EVERY_S: Final = 2.0

log = structlog.get_logger("mlwatchd.playbooks")


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
    """Runs playbooks for findings; see the module docstring for the contract.

    Satisfies :class:`playbooks.protocol.ResponseSide`.
    """

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
        self._publish = publish
        connection = SlackConnection.from_settings(slack)
        poster = SlackPoster(connection) if connection is not None else None
        inter = settings.interactivity
        signing_secret = (inter.signing_secret.get_secret_value().encode()
                          if inter.enabled and inter.signing_secret else b"")
        self.runtime = ActionRuntime(
            slack=poster,
            publish=publish,
            actions_topic=settings.actions_topic,
            interactivity=bool(signing_secret),
            pseudonymizer=pseudonymizer if settings.pseudonymize else None,
            clock=clock,
        )
        self.redactor = REDACTOR
        self.redactor.add(*(connection.secrets() if connection is not None else ()),
                          *(s for b in playbooks.actions.values() for s in b.action.secrets()),
                          signing_secret.decode())
        self.outbox = Outbox(settings.outbox_path)
        self._closed = False
        self._stopping = threading.Event()
        self._stopped: int | None = None
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._audit_thread: threading.Thread | None = None
        self.audit = AuditTrail(self.outbox, self.redactor, publish=publish,
                                topic=settings.audit_topic, on_event=on_event)
        self.queue = ActionQueue(playbooks, settings, self.outbox, self.runtime, self.audit)
        self.approvals = Approvals(playbooks, settings, self.outbox, self.queue, self.audit,
                                   self.runtime, signing_secret=signing_secret, clock=clock,
                                   wake=self._wake)
        self.incidents = Incidents(playbooks, settings, self.outbox, self.queue, self.audit,
                                   self.approvals, redactor=self.redactor, clock=clock,
                                   wake=self._wake)
        self.intake = Intake(playbooks, self.outbox, self.queue, self.audit, self.incidents,
                             redactor=self.redactor, clock=clock, wake=self._wake)
        self.delivery = Delivery(playbooks, settings, self.outbox, self.runtime, self.audit,
                                 redactor=self.redactor, clock=clock, wake=self._wake)
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
        try:
            recovered = self.outbox.recover_running(timeout_s=INTAKE_WAIT_S)
        except OutboxUnavailable as exc:
            # Locked by another process. The timer recovers jobs of dead owners;
            # a predecessor with our own pid (a container's pid 1) waits for the
            # next start: taking our own running jobs later could post them twice.
            log.warning("playbook_outbox_unavailable_at_start", error=self.redactor.text(str(exc)))
            recovered = 0
        if recovered:
            log.warning("playbook_jobs_recovered", count=recovered,
                        detail="in flight when the previous process stopped; retried")
        for i in range(self.settings.workers):
            self._threads.append(threading.Thread(
                target=self.delivery.run, args=(self._stopping,), name=f"mlwatchd-action-{i}",
                daemon=True))
        self._threads.append(threading.Thread(target=self.incidents.run, args=(self._stopping,),
                                              name="mlwatchd-playbook-timer", daemon=True))
        if self.settings.adopt_outboxes and not self.outbox.memory:
            self._threads.append(threading.Thread(target=self._adopt_loop,
                                                  args=(self._stopping,),
                                                  name="mlwatchd-outbox-adopt", daemon=True))
        self._audit_thread = threading.Thread(target=self.audit.run, args=(self._stopping,),
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
        while self._threads and time.monotonic() < deadline and \
                self.delivery.pauses.due_count(self.outbox) > 0:
            time.sleep(0.05)
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        if self._audit_thread is not None:
            self._audit_thread.join(max(0.2, deadline - time.monotonic()))
        undelivered = self.outbox.count(
            "status IN ('pending', 'running') AND (phase != 'revert' OR next_at <= ?)",
            self._clock())
        if undelivered:
            log.warning("playbook_actions_undelivered_at_stop", count=undelivered,
                        detail="kept in the outbox; delivered after the next start")
        self.outbox.close()
        self._stopped = undelivered
        return undelivered

    def adopt_orphans(self) -> int:
        """Take over the undelivered jobs of orphaned outboxes (``playbooks.adopt_outboxes``)."""
        pattern = self.settings.adopt_outboxes
        if not pattern or self._closed:
            return 0
        try:
            taken = adopt_orphans(self.outbox, pattern, self._clock())
        except (OutboxUnavailable, OSError, sqlite3.Error, UnsafeStateFile) as exc:
            log.warning("playbook_outbox_adoption_failed", error=self.redactor.text(str(exc)))
            return 0
        for path, count in taken.items():
            log.warning("playbook_outbox_adopted", outbox=path, jobs=count,
                        detail="its owner is gone; its undelivered actions are delivered here")
            self.audit.event("outbox_adopted", outbox=path, jobs=count)
        if taken:
            self._wake.set()
        return sum(taken.values())

    def _adopt_loop(self, stopping: threading.Event) -> None:
        while not stopping.wait(_ADOPT_EVERY_S):
            self.adopt_orphans()

    # -- the daemon's calls (playbooks.protocol.ResponseSide) --------------------

    def submit(self, finding: Finding) -> None:
        """Match ``finding`` against the routes and queue the resulting actions."""
        if self._closed:
            log.warning("playbook_finding_refused", finding_id=finding.finding_id,
                        reason="stopped")
            self.audit.event("submit_failed", finding_id=finding.finding_id, reason="stopped")
            return
        self.intake.submit(finding)

    def mark_seen(self, route: str, finding_id: str, at: float) -> bool:
        """Record that another replica took ``finding_id`` on ``route``; True if new here."""
        return self.intake.mark_seen(route, finding_id, at)

    def tick(self, now: float | None = None) -> None:
        """Run due timers once: repeats, resolves, escalations, approval expiry, purge."""
        self.incidents.tick(now)

    def handle_slack_interaction(self, headers: Mapping[str, str], body: bytes
                                 ) -> tuple[int, bytes]:
        """Slack's POST to the interactivity URL -> (HTTP status, body); see Approvals."""
        return self.approvals.handle_slack_interaction(headers, body)
