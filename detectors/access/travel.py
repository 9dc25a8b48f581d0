"""Impossible travel: two sign-ins of one principal too far apart for the time between them.

Per-principal state, exact under the ``partition`` scope.
"""

from __future__ import annotations

import math
from typing import ClassVar

from detectors.access.audit_fields import (
    ATLAS_ACCOUNTS,
    haversine_km,
)
from detectors.base import Detector
from detectors.events import AccessEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import Cooldown, EntityTable
from detectors.state_codec import state_type

__all__ = ["ImpossibleTravelDetector"]


@state_type("access.place")
class _Place(Cooldown):
    __slots__ = ("city", "country", "ip", "lat", "lon", "ts")

    def __init__(self) -> None:
        super().__init__()
        self.ts = -math.inf
        self.lat = 0.0
        self.lon = 0.0
        self.country: str | None = None
        self.city: str | None = None
        self.ip: str | None = None


class ImpossibleTravelDetector(Detector):
    """Consecutive successful logins too far apart for the time between them.

    For each principal the last successful login-like event with coordinates
    (``login``, ``token.issue``, ``token.use`` by default) is kept. The next
    one is judged on its great-circle distance minus ``geo_error_km`` (IP
    geolocation is often off by a city or a region, so each point may be off by
    about that much): when that distance is at least ``min_distance_km`` and
    the implied speed exceeds ``max_speed_kmh`` (about an airliner's cruise
    speed; real door-to-door trips are much slower), a finding is made. The
    time between the logins is floored at ``min_gap_seconds`` so two logins in
    the same second do not give an infinite speed. One finding per principal
    per ``cooldown_seconds``.

    >>> from detectors.events import AccessEvent, Geo
    >>> from detectors.findings import Source
    >>> det = ImpossibleTravelDetector()
    >>> def login(t, lat, lon, country):
    ...     ev = AccessEvent(ts=t, principal="ann", action="login", outcome="success",
    ...                      geo=Geo(country=country, lat=lat, lon=lon))
    ...     return det.process(ev, Source("ml.access", 0, int(t)))
    >>> login(0, 50.11, 8.68, "DE"), login(10 * 3600, 40.71, -74.01, "US")  # by plane
    (None, None)
    >>> found = login(11 * 3600, 1.35, 103.82, "SG")   # an hour later, Singapore
    >>> found[0].evidence["speed_kmh"] > 10_000, found[0].severity
    (True, 'high')
    """

    name: ClassVar[str] = "access.impossible_travel"
    state_fields: ClassVar[tuple[str, ...]] = ("table",)
    event_types: ClassVar[frozenset[str]] = frozenset({"access"})

    def __init__(
        self,
        max_speed_kmh: float = 1000.0,
        geo_error_km: float = 100.0,
        min_distance_km: float = 500.0,
        min_gap_seconds: float = 60.0,
        cooldown_seconds: float = 3600.0,
        actions: tuple[str, ...] = ("login", "token.issue", "token.use"),
        max_principals: int = 100_000,
    ) -> None:
        if max_speed_kmh <= 0 or min_gap_seconds <= 0:
            raise ValueError("max_speed_kmh and min_gap_seconds must be > 0")
        self.max_speed_kmh = max_speed_kmh
        self.geo_error_km = geo_error_km
        self.min_distance_km = min_distance_km
        self.min_gap_seconds = min_gap_seconds
        self.cooldown_seconds = cooldown_seconds
        self.actions = frozenset(actions)
        self.table: EntityTable[_Place] = EntityTable(max_principals)

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, AccessEvent)
        geo = event.geo
        if (
            geo is None
            or geo.lat is None
            or geo.lon is None
            or event.outcome != "success"
            or event.action not in self.actions
        ):
            return None
        ts: float = event.ts  # type: ignore[assignment]
        st = self.table.touch(event.principal, _Place)
        found = None
        if st.ts > -math.inf:
            distance = haversine_km(st.lat, st.lon, geo.lat, geo.lon)
            effective = distance - 2 * self.geo_error_km
            if effective >= self.min_distance_km and not st.cooling_down(ts):
                hours = max(abs(ts - st.ts), self.min_gap_seconds) / 3600.0
                speed = effective / hours
                if speed > self.max_speed_kmh:
                    found = self._finding(event, source, st, distance, effective, speed, ts)
        if ts >= st.ts:  # a late event does not replace a newer position
            st.ts, st.lat, st.lon = ts, geo.lat, geo.lon
            st.country, st.city, st.ip = geo.country, geo.city, event.source_ip
        return found

    def _finding(
        self,
        event: AccessEvent,
        source: Source,
        st: _Place,
        distance: float,
        effective: float,
        speed: float,
        ts: float,
    ) -> list[Finding]:
        st.start_cooldown(ts, self.cooldown_seconds)
        geo = event.geo
        assert geo is not None
        here = geo.city or geo.country or f"{geo.lat:.1f},{geo.lon:.1f}"
        there = st.city or st.country or f"{st.lat:.1f},{st.lon:.1f}"
        minutes = abs(ts - st.ts) / 60.0
        severity: Severity = "high" if speed >= 3 * self.max_speed_kmh else "medium"
        return [
            Finding.build(
                detector=self.name,
                kind="suspicious_access",
                severity=severity,
                entity=Entity("principal", event.principal),
                model_id=None,
                summary=(
                    f"Principal {event.principal} logged in from {here} {minutes:.0f} min after "
                    f"{there}, {distance:,.0f} km away: {speed:,.0f} km/h, above the "
                    f"{self.max_speed_kmh:,.0f} km/h a traveller can reach."
                ),
                evidence={
                    "distance_km": round(distance, 1),
                    "distance_minus_geo_error_km": round(effective, 1),
                    "elapsed_seconds": round(abs(ts - st.ts), 1),
                    "speed_kmh": round(speed, 1),
                    "threshold_kmh": self.max_speed_kmh,
                    "previous": {"country": st.country, "city": st.city, "ip": st.ip},
                    "current": {"country": geo.country, "city": geo.city, "ip": event.source_ip},
                    "action": event.action,
                },
                atlas=ATLAS_ACCOUNTS,
                event_ts=ts,
                sources=[source],
            )
        ]
