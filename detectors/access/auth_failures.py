"""Bursts of authentication failures per principal.

Per-principal state, exact under the ``partition`` scope.
"""

from __future__ import annotations

import math
from typing import ClassVar, Final

from detectors.access.audit_fields import (
    ATLAS_ACCOUNTS,
    model_id_of,
)
from detectors.base import Detector
from detectors.events import AccessEvent, AuditEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["AuthFailureBurstDetector"]


@state_type("access.failures")
class _Failures:
    __slots__ = ("auth", "authz", "cooldown", "usual")

    def __init__(self) -> None:
        self.auth: list[float] = []  # failure times, oldest first
        self.authz: list[float] = []  # denial times
        self.usual = [0.0, 0.0]  # EWMA of failures before a success, per channel
        self.cooldown = [-math.inf, -math.inf]


#: Failure times kept per channel at most (a long brute force is still a burst).
_MAX_FAILURES: Final = 512


class AuthFailureBurstDetector(Detector):
    """A burst of failed or denied attempts by a principal, then a success.

    Two channels per principal: authentication (failed ``login`` /
    ``token.issue``) and authorisation (denied access or audit events). A
    success in a channel whose failures within ``window_seconds`` reach the
    principal's threshold makes a finding: someone guessed a password, or
    probed until something opened. The threshold is the larger of
    ``min_failures`` and ``min_ratio`` times the principal's own EWMA of
    failures before a success (a service that always retries a few times is
    judged against its own habit). A few mistyped passwords stay quiet. One
    finding per principal and channel per ``cooldown_seconds``.

    >>> from detectors.events import AccessEvent
    >>> from detectors.findings import Source
    >>> det = AuthFailureBurstDetector()
    >>> def login(t, outcome):
    ...     ev = AccessEvent(ts=t, principal="joe", action="login", outcome=outcome)
    ...     return det.process(ev, Source("ml.access", 0, int(t)))
    >>> [login(t, "failure") for t in (0, 5)], login(10, "success")   # two typos
    ([None, None], None)
    >>> _ = [login(100 + t, "failure") for t in range(12)]
    >>> found = login(120, "success")
    >>> found[0].evidence["failures_in_window"], found[0].severity
    (12, 'high')
    """

    name: ClassVar[str] = "access.auth_failure_burst"
    state_fields: ClassVar[tuple[str, ...]] = ("table",)
    event_types: ClassVar[frozenset[str]] = frozenset({"access", "audit"})

    def __init__(
        self,
        window_seconds: float = 900.0,
        min_failures: int = 6,
        min_ratio: float = 4.0,
        alpha: float = 0.1,
        cooldown_seconds: float = 3600.0,
        auth_actions: tuple[str, ...] = ("login", "token.issue", "mfa.verify"),
        max_principals: int = 100_000,
    ) -> None:
        if window_seconds <= 0 or min_failures < 1 or not 0 < alpha < 1:
            raise ValueError("window_seconds > 0, min_failures >= 1, alpha in (0, 1)")
        self.window_seconds = window_seconds
        self.min_failures = min_failures
        self.min_ratio = min_ratio
        self.alpha = alpha
        self.cooldown_seconds = cooldown_seconds
        self.auth_actions = frozenset(auth_actions)
        self.table: EntityTable[_Failures] = EntityTable(max_principals)

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        if isinstance(event, AccessEvent):
            who = event.principal
            channel = 0 if event.action in self.auth_actions else 1
        else:
            assert isinstance(event, AuditEvent)
            who = event.actor
            channel = 1
        outcome = event.outcome
        ts: float = event.ts  # type: ignore[assignment]
        if outcome != "success":
            st = self.table.touch(who, _Failures)
            times = st.auth if channel == 0 else st.authz
            times.append(ts)
            cutoff = ts - self.window_seconds
            if times[0] < cutoff or len(times) > _MAX_FAILURES:
                keep = [t for t in times if t >= cutoff][-_MAX_FAILURES:]
                if channel == 0:
                    st.auth = keep
                else:
                    st.authz = keep
            return None
        known = self.table.get(who)  # a success alone creates no state
        if known is None:
            return None
        st = known
        times = st.auth if channel == 0 else st.authz
        if not times:
            return None
        cutoff = ts - self.window_seconds
        count = sum(1 for t in times if t >= cutoff)
        usual = st.usual[channel]
        limit = max(float(self.min_failures), self.min_ratio * usual)
        # Learn the habit from this episode, then start a new one.
        st.usual[channel] = usual + self.alpha * (min(count, limit) - usual)
        if channel == 0:
            st.auth = []
        else:
            st.authz = []
        if count < limit or ts < st.cooldown[channel]:
            return None
        st.cooldown[channel] = ts + self.cooldown_seconds
        return self._finding(event, source, who, channel, count, usual, limit, times, ts)

    def _finding(
        self,
        event: AccessEvent | AuditEvent,
        source: Source,
        who: str,
        channel: int,
        count: int,
        usual: float,
        limit: float,
        times: list[float],
        ts: float,
    ) -> list[Finding]:
        first = min(t for t in times if t >= ts - self.window_seconds)
        span = ts - first
        resource = event.resource
        if channel == 0:
            severity: Severity = "high"
            what = f"{count} failed authentications"
            kind_text = f"then a successful {event.action}"
        else:
            severity = "medium"
            what = f"{count} denied attempts"
            kind_text = f"then a successful {event.action} on {resource or 'a resource'}"
        return [
            Finding.build(
                detector=self.name,
                kind="suspicious_access",
                severity=severity,
                entity=Entity("principal", who),
                model_id=model_id_of(resource),
                summary=(
                    f"Principal {who} had {what} within {span / 60:.0f} min, {kind_text}; "
                    f"its usual is {usual:.1f} failures before a success."
                ),
                evidence={
                    "channel": "authentication" if channel == 0 else "authorization",
                    "failures_in_window": count,
                    "window_seconds": self.window_seconds,
                    "first_failure_ts": first,
                    "baseline_failures_per_success": round(usual, 3),
                    "threshold": round(limit, 3),
                    "success_action": event.action,
                    "auth_method": getattr(event, "auth_method", None),
                    "source_ip": event.source_ip,
                },
                atlas=ATLAS_ACCOUNTS if channel == 0 else [],
                event_ts=ts,
                sources=[source],
            )
        ]


#: Countries, networks and user agents remembered per principal at most.
