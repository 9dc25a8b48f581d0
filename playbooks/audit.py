"""The response engine's audit trail and event hook.

:class:`AuditTrail` logs each audit event and queues it in the outbox, in the
caller's transaction, for the audit topic; its :meth:`AuditTrail.run` loop (a
thread of the engine) publishes the queue in order with backoff.
:meth:`AuditTrail.event` calls the engine's ``on_event(name, fields)`` hook
(metrics); a broken hook is logged, never raised.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import structlog

from detectors.findings import rfc3339
from playbooks.actions import Publish
from playbooks.outbox import Outbox
from playbooks.redact import Redactor

__all__ = ["AuditTrail", "OnEvent"]

OnEvent = Callable[[str, dict[str, Any]], None]

log = structlog.get_logger("mlwatchd.playbooks")


class AuditTrail:
    """Audit records (log + outbox queue + publisher loop) and the ``on_event`` hook."""

    def __init__(self, outbox: Outbox, redactor: Redactor, *, publish: Publish | None,
                 topic: str, on_event: OnEvent | None) -> None:
        self.outbox = outbox
        self.redactor = redactor
        self.publish = publish
        self.topic = topic
        self.on_event = on_event

    @staticmethod
    def payload(event: str, now: float, fields: dict[str, Any]) -> bytes:
        record = {"schema": "mlwatchd.audit/v1", "ts": rfc3339(now, millis=False),
                  "event": event,
                  **{k: v for k, v in fields.items() if v is not None}}
        return json.dumps(record, separators=(",", ":"), default=str).encode()

    def record(self, db: sqlite3.Connection, event: str, now: float, **fields: Any) -> None:
        """Log it and queue it for the audit topic, in the caller's transaction."""
        fields = self.redactor.redact(fields)
        log.info("playbook_audit", audit_event=event,
                 **{k: v for k, v in fields.items() if k not in ("preview", "result")})
        if self.publish is not None:
            self.outbox.add_audit(db, fields.get("finding_id") or None,
                                  self.payload(event, now, fields), now)

    def record_now(self, event: str, now: float, **fields: Any) -> None:
        with self.outbox.tx() as db:
            self.record(db, event, now, **fields)

    def event(self, name: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(name, fields)
        except Exception:  # a broken metrics hook must not stop responding
            log.exception("playbook_event_callback_failed", event_name=name)

    def run(self, stopping: threading.Event) -> None:
        """Publish queued records until ``stopping`` (then once more, best effort)."""
        backoff = 0.5
        publish = self.publish
        while publish is not None:
            stopped = stopping.is_set()
            try:
                rows = self.outbox.audit_batch()
            except Exception:
                if stopped:
                    return
                stopping.wait(1.0)
                continue
            if not rows:
                if stopped:
                    return
                stopping.wait(0.2)
                continue
            done: list[int] = []
            try:
                for row in rows:
                    key = row["key"].encode() if row["key"] else None
                    event = json.loads(row["payload"]).get("event", "")
                    publish(self.topic, key, bytes(row["payload"]),
                            [("mlwatchd-audit", str(event).encode())])
                    done.append(row["id"])
                backoff = 0.5
            except Exception as exc:
                log.warning("audit_publish_failed", error=f"{type(exc).__name__}",
                            retry_in_s=backoff)
                if stopped:
                    return
                stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                try:
                    self.outbox.audit_done(done)
                except Exception:  # closed by stop() while a publish hung
                    return
