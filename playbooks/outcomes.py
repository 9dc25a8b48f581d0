"""How one delivery attempt ends, as the outbox sees it.

An action's ``deliver`` returns a result mapping (what to remember, e.g. a
Slack message ``ts``) or raises one of these. The outbox owns what happens
next: :class:`RetryLater` schedules another attempt with backoff (or after
``after`` seconds, from a Retry-After), :class:`PermanentFailure` reports the
action failed at once, :class:`Deferred` waits without counting an attempt
(e.g. a thread reply whose parent message is not posted yet).
"""

from __future__ import annotations

__all__ = ["Deferred", "DeliveryError", "PermanentFailure", "RetryLater"]


class DeliveryError(Exception):
    """Base: ``reason`` is short, secret-free text for the audit trail."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RetryLater(DeliveryError):
    """Transient: try again, after ``after`` seconds if the destination said so."""

    def __init__(self, reason: str, *, after: float | None = None,
                 status: int | None = None) -> None:
        super().__init__(reason, status=status)
        self.after = after


class PermanentFailure(DeliveryError):
    """Retrying cannot help (bad request, revoked webhook, TLS failure)."""


class Deferred(DeliveryError):
    """Not yet: try again in ``after`` seconds without counting an attempt."""

    def __init__(self, reason: str, *, after: float = 1.0) -> None:
        super().__init__(reason)
        self.after = after
