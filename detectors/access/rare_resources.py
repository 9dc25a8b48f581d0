"""Access to a resource a principal and its peers rarely touch.

Per-principal state, plus per-resource accessor sets that see only the
principals of the same partition; see :class:`RareResourceDetector`.
"""

from __future__ import annotations

from typing import ClassVar, Final

from detectors.access.audit_fields import (
    model_id_of,
    verb_of,
)
from detectors.access.baselines import NoveltyRate
from detectors.base import Detector
from detectors.events import AccessEvent, AuditEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import Cooldown, EntityTable
from detectors.state_codec import state_type

__all__ = ["RareResourceDetector"]


@state_type("access.pairs")
class _Pairs(Cooldown):
    __slots__ = ("counts", "first_ts", "n", "new_rate")

    def __init__(self, ts: float) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self.first_ts = ts
        self.n = 0
        self.new_rate = NoveltyRate()  # of first touches among the principal's events


@state_type("access.accessors")
class _Accessors:
    __slots__ = ("first_ts", "n", "who")

    def __init__(self, ts: float) -> None:
        self.who: set[str] = set()
        self.first_ts = ts
        self.n = 0


#: Accessors remembered per resource: enough to tell "rare" from "popular".
_MAX_ACCESSORS: Final = 16
_SENSITIVE_VERBS: Final = frozenset({"write", "delete", "update", "assign", "grant", "register"})


class RareResourceDetector(Detector):
    """First touch of an established, rarely used resource by a creature of habit.

    A (principal, resource) pair seen for the first time is reported when all
    of these hold: the principal is past its warm-up (``warmup_events`` over
    ``warmup_seconds``) and usually sticks to known resources (EWMA rate of
    first touches, ``novelty_alpha`` per event, below ``max_novelty``); the
    resource is established (first seen at least ``min_resource_age_seconds``
    ago, ``min_resource_events`` events) and rare: fewer than
    ``max_other_accessors`` other principals touched it. Exploratory users,
    new datasets and popular resources stay quiet by design.

    Per-resource accessor sets live per partition: they only count principals
    whose events land on the same partition, so "rare" means rare among a
    sample of the principals; with many partitions, raise
    ``max_other_accessors`` or accept fewer findings on shared resources.
    One finding per principal per ``cooldown_seconds``; further first touches
    in that time are counted in the next finding's evidence.

    >>> from detectors.events import AuditEvent
    >>> from detectors.findings import Source
    >>> det = RareResourceDetector(warmup_events=20, warmup_seconds=0,
    ...                            min_resource_age_seconds=0, min_resource_events=3)
    >>> def read(t, who, ds):
    ...     ev = AuditEvent(ts=t, actor=who, action="dataset.read", resource=ds,
    ...                     outcome="success")
    ...     return det.process(ev, Source("ml.audit", 0, int(t)))
    >>> quiet = [read(t, "hr-bot", "dataset:salaries") for t in range(10)]
    >>> quiet += [read(100 + t, "ann", f"dataset:sales-{t % 3}") for t in range(600)]
    >>> quiet.count(None) == len(quiet)
    True
    >>> read(800, "ann", "dataset:salaries")[0].evidence["other_accessors"]
    1
    >>> read(900, "hr-bot", "dataset:sales-0") is None   # hr-bot is still warming up
    True
    """

    name: ClassVar[str] = "access.rare_resource"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "resources")
    event_types: ClassVar[frozenset[str]] = frozenset({"audit", "access"})

    def __init__(
        self,
        warmup_events: int = 100,
        warmup_seconds: float = 3 * 86400.0,
        novelty_alpha: float = 0.002,
        max_novelty: float = 0.01,
        max_other_accessors: int = 3,
        min_resource_age_seconds: float = 3 * 86400.0,
        min_resource_events: int = 10,
        cooldown_seconds: float = 3600.0,
        max_resources_per_principal: int = 512,
        max_principals: int = 50_000,
        max_resources: int = 100_000,
    ) -> None:
        if not 0 < novelty_alpha < 1 or not 0 < max_novelty < 1:
            raise ValueError("novelty_alpha and max_novelty must be in (0, 1)")
        self.warmup_events = warmup_events
        self.warmup_seconds = warmup_seconds
        self.novelty_alpha = novelty_alpha
        self.max_novelty = max_novelty
        self.max_other_accessors = max_other_accessors
        self.min_resource_age_seconds = min_resource_age_seconds
        self.min_resource_events = min_resource_events
        self.cooldown_seconds = cooldown_seconds
        self.max_resources_per_principal = max_resources_per_principal
        self.table: EntityTable[_Pairs] = EntityTable(max_principals)
        self.resources: EntityTable[_Accessors] = EntityTable(max_resources)

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        if isinstance(event, AuditEvent):
            who, resource = event.actor, event.resource
        else:
            assert isinstance(event, AccessEvent)
            who, resource = event.principal, event.resource  # type: ignore[assignment]
            if resource is None:
                return None
        if event.outcome != "success":
            return None
        ts: float = event.ts  # type: ignore[assignment]
        st = self.table.touch(who, lambda: _Pairs(ts))
        res = self.resources.touch(resource, lambda: _Accessors(ts))
        res.n += 1
        counts = st.counts
        count = counts.get(resource)
        st.n += 1
        if count is not None:
            counts[resource] = count + 1
            st.new_rate.update(False, self.novelty_alpha)
            return None
        # First touch of this resource by this principal.
        novelty = st.new_rate.rate()
        st.new_rate.update(True, self.novelty_alpha)
        if len(counts) >= self.max_resources_per_principal:
            del counts[next(iter(counts))]  # forget the oldest first-seen resource
        counts[resource] = 1
        others = len(res.who)
        if others < _MAX_ACCESSORS:
            res.who.add(who)
        if (
            st.n <= self.warmup_events
            or ts - st.first_ts < self.warmup_seconds
            or novelty >= self.max_novelty
            or others >= self.max_other_accessors
            or res.n <= self.min_resource_events
            or ts - res.first_ts < self.min_resource_age_seconds
            or st.cooling_down(ts)
        ):
            return None
        st.start_cooldown(ts, self.cooldown_seconds)
        action = event.action
        sensitive = verb_of(action) in _SENSITIVE_VERBS or resource.startswith(("secret:", "role:"))
        severity: Severity = "medium" if sensitive else "low"
        return [
            Finding.build(
                detector=self.name,
                kind="suspicious_access",
                severity=severity,
                entity=Entity("principal", who),
                model_id=model_id_of(resource),
                summary=(
                    f"Principal {who} touched {resource} ({action}) for the first time; it "
                    f"rarely touches new resources ({novelty:.2%} of its events) and only "
                    f"{others} other principal(s) ever used this resource."
                ),
                evidence={
                    "resource": resource,
                    "action": action,
                    "principal_novelty_rate": round(novelty, 5),
                    "threshold_novelty_rate": self.max_novelty,
                    "principal_events": st.n,
                    "principal_known_resources": len(counts),
                    "other_accessors": others,
                    "threshold_other_accessors": self.max_other_accessors,
                    "resource_events": res.n,
                    "resource_age_seconds": round(ts - res.first_ts, 1),
                },
                atlas=[],
                event_ts=ts,
                sources=[source],
            )
        ]

    def stats(self) -> dict[str, float]:
        return {
            "entities": len(self.table),
            "evicted_total": self.table.evicted,
            "resources": len(self.resources),
            "resources_evicted_total": self.resources.evicted,
        }
