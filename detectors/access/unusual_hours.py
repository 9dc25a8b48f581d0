"""Unusual hours: reads at an hour of the day a principal is almost never active.

Per-principal state only (a decaying histogram of local hours), so exact
under the ``partition`` scope.
"""

from __future__ import annotations

from typing import ClassVar

from detectors.access.audit_fields import (
    local_hour,
    model_id_of,
    verb_of,
)
from detectors.base import Detector
from detectors.events import AccessEvent, AuditEvent, Event
from detectors.findings import Entity, Finding, Source
from detectors.state import Cooldown, EntityTable
from detectors.state_codec import state_type

__all__ = ["UnusualHoursDetector", "hour_mass"]


def hour_mass(hist: list[float], hour: int, radius: int) -> float:
    """Share of a 24-bin circular histogram within ``radius`` hours of ``hour``.

    >>> hist = [0.0] * 24
    >>> for h in range(9, 18):
    ...     hist[h] = 10.0
    >>> hour_mass(hist, 3, 3), hour_mass(hist, 20, 3) > 0.1
    (0.0, True)
    """
    total = sum(hist)
    if total <= 0:
        return 1.0
    near = sum(hist[(hour + k) % 24] for k in range(-radius, radius + 1))
    return near / total


@state_type("access.hours")
class _Hours(Cooldown):
    __slots__ = (
        "active_days",
        "bucket",
        "bucket_count",
        "bucket_hour",
        "bucket_reads",
        "day",
        "hist",
        "lon",
    )

    def __init__(self) -> None:
        super().__init__()
        self.hist = [0.0] * 24
        self.lon: float | None = None
        self.bucket = -1
        self.bucket_hour = 0
        self.bucket_count = 0
        self.bucket_reads = 0
        self.day = -1
        self.active_days = 0


class UnusualHoursDetector(Detector):
    """Activity far outside the hours a principal usually works, in local solar time.

    Each principal has a 24-bin profile of its active hours (an hour counts
    once however many events it holds), in local solar time at the longitude
    of its last successful login with geo (UTC when none is known): a traveller
    who works the usual hours at the destination stays quiet, while the same
    work at 3 a.m. does not. The profile decays by ``daily_decay`` per active
    day so a changed schedule is learnt within weeks.

    Once a principal has ``warmup_days`` active days, the ``min_events``-th
    event of an hour is judged: when the profile holds less than
    ``max_mass`` of its weight within ``radius_hours`` of that hour, a finding
    is made (``exfiltration`` if the hour includes reads or downloads,
    ``suspicious_access`` otherwise). Service accounts active around the
    clock have mass everywhere and never fire. One finding per principal per
    ``cooldown_seconds``.

    >>> from detectors.events import AuditEvent
    >>> from detectors.findings import Source
    >>> det = UnusualHoursDetector(warmup_days=5)
    >>> def act(t, action="dataset.read"):
    ...     ev = AuditEvent(ts=t, actor="eve", action=action, resource="dataset:x",
    ...                     outcome="success")
    ...     return det.process(ev, Source("ml.audit", 0, int(t)))
    >>> day = 86400.0
    >>> quiet = [act(d * day + h * 3600.0 + m * 60) for d in range(10)
    ...          for h in range(9, 17) for m in (5, 25, 45)]
    >>> quiet.count(None) == len(quiet)
    True
    >>> night = [act(10 * day + 3 * 3600.0 + m * 60) for m in range(5)]
    >>> [bool(f) for f in night], night[2][0].kind
    ([False, False, True, False, False], 'exfiltration')
    """

    name: ClassVar[str] = "access.unusual_hours"
    state_fields: ClassVar[tuple[str, ...]] = ("table",)
    event_types: ClassVar[frozenset[str]] = frozenset({"audit", "access"})

    def __init__(
        self,
        radius_hours: int = 3,
        max_mass: float = 0.01,
        min_events: int = 3,
        warmup_days: int = 7,
        daily_decay: float = 0.97,
        cooldown_seconds: float = 12 * 3600.0,
        read_verbs: tuple[str, ...] = ("read", "download", "export", "query", "copy"),
        max_principals: int = 100_000,
    ) -> None:
        if not 0 <= radius_hours < 12 or not 0 < max_mass < 1 or not 0 < daily_decay <= 1:
            raise ValueError("radius_hours in [0, 12), max_mass in (0, 1), daily_decay in (0, 1]")
        self.radius_hours = radius_hours
        self.max_mass = max_mass
        self.min_events = min_events
        self.warmup_days = warmup_days
        self.daily_decay = daily_decay
        self.cooldown_seconds = cooldown_seconds
        self.read_verbs = frozenset(read_verbs)
        self.table: EntityTable[_Hours] = EntityTable(max_principals)

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        ts: float = event.ts  # type: ignore[assignment]
        if isinstance(event, AccessEvent):
            if event.outcome != "success":
                return None
            st = self.table.touch(event.principal, _Hours)
            geo = event.geo
            if geo is not None and geo.lon is not None and event.action == "login":
                st.lon = geo.lon
            who = event.principal
            is_read = False
        else:
            assert isinstance(event, AuditEvent)
            if event.outcome != "success":
                return None
            st = self.table.touch(event.actor, _Hours)
            who = event.actor
            is_read = verb_of(event.action) in self.read_verbs
        bucket = int(ts // 3600.0)
        if bucket != st.bucket:
            if bucket < st.bucket:  # late event of an hour already counted
                return None
            hour = local_hour(ts, st.lon)
            day = bucket // 24
            if day != st.day:
                st.day = day
                st.active_days += 1
                d = self.daily_decay
                if d < 1.0:
                    st.hist = [h * d for h in st.hist]
            st.bucket = bucket
            st.bucket_hour = hour
            st.bucket_count = 0
            st.bucket_reads = 0
            st.hist[hour] += 1.0
        st.bucket_count += 1
        if is_read:
            st.bucket_reads += 1
        if (
            st.bucket_count != self.min_events
            or st.active_days <= self.warmup_days
            or st.cooling_down(ts)
        ):
            return None
        # The bin this UTC hour was counted in (local solar hours straddle UTC ones).
        hour = st.bucket_hour
        hist = list(st.hist)
        hist[hour] -= 1.0  # this hour itself is not evidence that it is usual
        mass = hour_mass(hist, hour, self.radius_hours)
        if mass >= self.max_mass:
            return None
        st.start_cooldown(ts, self.cooldown_seconds)
        reads = st.bucket_reads
        usual = [h for h in range(24) if hist[h] >= 0.05 * max(hist)]
        return [
            Finding.build(
                detector=self.name,
                kind="exfiltration" if reads else "suspicious_access",
                severity="medium" if reads else "low",
                entity=Entity("principal", who),
                model_id=model_id_of(getattr(event, "resource", None)),
                summary=(
                    f"Principal {who} is active at {hour:02d}h local solar time, where its "
                    f"profile of {st.active_days} active days holds {mass:.1%} of its activity "
                    f"within {self.radius_hours}h (usual hours {_hours_text(usual)})."
                ),
                evidence={
                    "local_hour": hour,
                    "longitude": st.lon,
                    "profile_mass_near_hour": round(mass, 5),
                    "threshold": self.max_mass,
                    "radius_hours": self.radius_hours,
                    "active_days": st.active_days,
                    "usual_hours": usual,
                    "events_this_hour": st.bucket_count,
                    "reads_this_hour": reads,
                },
                # Odd hours alone show no technique; the volume detector cites AML.T0025.
                atlas=[],
                event_ts=ts,
                sources=[source],
                id_key=f"hour:{st.bucket}",
            )
        ]


def _hours_text(hours: list[int]) -> str:
    """``[8, 9, 10, 14]`` -> ``'08-10h, 14h'`` (runs of consecutive hours)."""
    if not hours:
        return "none"
    runs: list[tuple[int, int]] = []
    for h in hours:
        if runs and h == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], h)
        else:
            runs.append((h, h))
    return ", ".join(f"{a:02d}h" if a == b else f"{a:02d}-{b:02d}h" for a, b in runs)
