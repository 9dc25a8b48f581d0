"""Grants of privileged roles or permissions, by whom and to whom.

Per-actor state, exact under the ``partition`` scope.
"""

from __future__ import annotations

import re
from typing import ClassVar, Final

from detectors.access.audit_fields import (
    model_id_of,
    resource_tokens,
)
from detectors.base import Detector
from detectors.events import AuditEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["PrivilegeGrantDetector"]

_GRANTEE_KEYS: Final = ("grantee", "target", "member", "assignee", "user", "principal")
_PRIVILEGED: Final = re.compile(r"admin|owner|root|super|iam|security|full", re.IGNORECASE)


@state_type("access.grantor")
class _Grantor:
    __slots__ = ("first_ts", "grants")

    def __init__(self, ts: float) -> None:
        self.grants = 0
        self.first_ts = ts


class PrivilegeGrantDetector(Detector):
    """Role and permission grants to oneself, or by a principal that never granted.

    A grant (``role.assign`` and similar actions) names its grantee in an
    ``attributes`` field (``grantee``, ``target``, ``member``, ...) or in the
    resource (``role:admin:alice``). Reported:

    - a grant to oneself, successful (``high``, ``critical`` for a privileged
      role: admin, owner, root, ...) or attempted and refused (``medium``);
    - a successful grant by a principal that granted nothing since the
      detector started, once it has watched ``warmup_seconds`` of events
      (``medium``, ``high`` for a privileged role). Administrators who grant
      routinely are learnt and stay quiet.

    >>> from detectors.events import AuditEvent
    >>> from detectors.findings import Source
    >>> det = PrivilegeGrantDetector(warmup_seconds=5)
    >>> def grant(t, actor, resource, outcome="success"):
    ...     ev = AuditEvent(ts=t, actor=actor, action="role.assign", resource=resource,
    ...                     outcome=outcome)
    ...     return det.process(ev, Source("ml.audit", 0, int(t)))
    >>> grant(0, "it-admin", "role:reader:bob") is None   # first event starts the clock
    True
    >>> grant(10, "it-admin", "role:reader:carol") is None
    True
    >>> found = grant(20, "mallory", "role:admin:mallory")
    >>> found[0].severity, found[0].evidence["self_grant"]
    ('critical', True)
    >>> grant(30, "dev-lead", "role:reader:dave")[0].evidence["rule"]
    'first_grant_by_actor'
    >>> grant(40, "dev-lead", "role:reader:erin") is None    # now a known grantor
    True
    """

    name: ClassVar[str] = "access.privilege_grant"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "first_ts")
    event_types: ClassVar[frozenset[str]] = frozenset({"audit"})

    def __init__(
        self,
        warmup_seconds: float = 3 * 86400.0,
        grant_actions: tuple[str, ...] = (
            "role.assign",
            "role.grant",
            "permission.grant",
            "policy.attach",
            "acl.grant",
        ),
        max_principals: int = 100_000,
    ) -> None:
        self.warmup_seconds = warmup_seconds
        self.grant_actions = frozenset(grant_actions)
        self.first_ts: float | None = None
        self.table: EntityTable[_Grantor] = EntityTable(max_principals)

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, AuditEvent)
        ts: float = event.ts  # type: ignore[assignment]
        if self.first_ts is None:
            self.first_ts = ts
        if event.action not in self.grant_actions:
            return None
        actor, resource = event.actor, event.resource
        grantee = None
        attrs = event.attributes
        if attrs:
            for key in _GRANTEE_KEYS:
                value = attrs.get(key)
                if isinstance(value, str) and value:
                    grantee = value
                    break
        if grantee is not None:
            self_grant = grantee == actor
        else:
            self_grant = actor in resource_tokens(resource) or resource.endswith(
                (":" + actor, "/" + actor, "=" + actor)
            )
        success = event.outcome == "success"
        st = self.table.get(actor)
        first_grant = st is None
        if success:
            st = self.table.touch(actor, lambda: _Grantor(ts))
            st.grants += 1
        privileged = bool(_PRIVILEGED.search(resource))
        warm = ts - self.first_ts >= self.warmup_seconds
        if self_grant:
            severity: Severity = "critical" if privileged and success else "high"
            if not success:
                severity = "medium"
            rule = "self_grant"
        elif success and first_grant and warm:
            severity = "high" if privileged else "medium"
            rule = "first_grant_by_actor"
        else:
            return None
        if rule == "self_grant":
            verb = "granted itself" if success else "tried to grant itself"
            summary = f"Principal {actor} {verb} {resource} ({event.action}, {event.outcome})."
        else:
            summary = (
                f"Principal {actor} granted {resource} to {grantee or 'another principal'}, "
                f"its first grant in {(ts - self.first_ts) / 86400:.1f} days watched."
            )
        return [
            Finding.build(
                detector=self.name,
                kind="suspicious_access",
                severity=severity,
                entity=Entity("principal", actor),
                model_id=model_id_of(resource),
                summary=summary,
                evidence={
                    "rule": rule,
                    "action": event.action,
                    "resource": resource,
                    "grantee": grantee,
                    "self_grant": self_grant,
                    "privileged_role": privileged,
                    "outcome": event.outcome,
                    "grants_by_actor": st.grants if st is not None else 0,
                    "watched_seconds": round(ts - self.first_ts, 1),
                    "source_ip": event.source_ip,
                },
                atlas=[],
                event_ts=ts,
                sources=[source],
            )
        ]
