"""Multi-day benign traffic: the access detectors stay quiet, and find attackers hidden in it."""

from __future__ import annotations

import zlib
from functools import cache

import pytest
from access_traffic import DAY, T0, benign_traffic

from detectors.access import DETECTORS
from detectors.access.audit_fields import haversine_km
from detectors.events import AccessEvent, AuditEvent, Event, Geo
from detectors.findings import Finding
from detectors.testing import feed

NAMES = [cls.name for cls in DETECTORS]


@cache
def traffic() -> tuple[Event, ...]:
    return tuple(benign_traffic())


def _subject(event: Event) -> str:
    return event.actor if isinstance(event, AuditEvent) else event.principal  # type: ignore[union-attr]


def _partitioned(events, partitions: int) -> list[list[Event]]:
    parts: list[list[Event]] = [[] for _ in range(partitions)]
    for event in events:
        parts[zlib.crc32(_subject(event).encode()) % partitions].append(event)
    return parts


def test_benign_traffic_has_the_rhythms_it_claims():
    events = traffic()
    principals = {_subject(e) for e in events}
    assert len(principals) >= 200 and events[-1].ts - events[0].ts >= 14 * DAY
    logins = [e for e in events if isinstance(e, AccessEvent) and e.action == "login"]
    assert sum(e.outcome == "failure" for e in logins) > 50  # mistyped passwords
    # Travellers crossed an ocean at a plausible speed between consecutive logins.
    last: dict[str, AccessEvent] = {}
    long_trips = 0
    for e in logins:
        if e.outcome != "success" or e.geo is None:
            continue
        prev = last.get(e.principal)
        if prev is not None and prev.geo is not None:
            km = haversine_km(prev.geo.lat, prev.geo.lon, e.geo.lat, e.geo.lon)
            if km > 3000:
                long_trips += 1
                assert km / ((e.ts - prev.ts) / 3600) < 1000
        last[e.principal] = e
    assert long_trips >= 10
    weekday_reads = sum(
        1
        for e in events
        if isinstance(e, AuditEvent) and ((e.ts - T0) // DAY) % 7 < 5 and e.actor.startswith("user")
    )
    weekend_reads = sum(
        1
        for e in events
        if isinstance(e, AuditEvent)
        and ((e.ts - T0) // DAY) % 7 >= 5
        and e.actor.startswith("user")
    )
    assert weekend_reads < 0.05 * weekday_reads  # weekly cycle
    assert any(e.action == "pipeline.run" for e in events if isinstance(e, AuditEvent))


@pytest.mark.parametrize("cls", DETECTORS, ids=NAMES)
def test_quiet_on_multi_day_benign_traffic(cls):
    found = feed(cls(), traffic())
    assert found == [], [f.summary for f in found[:5]]


@pytest.mark.parametrize("cls", DETECTORS, ids=NAMES)
def test_quiet_when_the_traffic_is_split_over_partitions(cls):
    found = [f for part in _partitioned(traffic(), 4) for f in feed(cls(), part)]
    assert found == [], [f.summary for f in found[:5]]


def _attacks(events) -> tuple[list[Event], dict[str, set[str]]]:
    """Attacks by a few benign principals on the last day; detector -> expected principals."""
    day = T0 + 14 * DAY  # a Monday
    home: dict[str, Geo] = {}
    for e in events:
        if isinstance(e, AccessEvent) and e.action == "login" and e.geo and e.principal not in home:
            home[e.principal] = e.geo
    out: list[Event] = []
    # Exfiltration: 60 GB within the hour, from a principal that reads ~0.8 GB in a
    # usual hour with a wide spread (its threshold is ~55x usual at z = 5).
    out += [
        AuditEvent(
            ts=day + 10 * 3600 + i * 59,
            actor="user-010",
            action="dataset.export",
            resource="dataset:team0-1",
            outcome="success",
            bytes=10**9,
        )
        for i in range(60)
    ]
    # Unusual hours: 01h local solar time, five hours before the earliest usual start.
    lon = home["user-031"].lon
    night = day + ((1.2 - lon / 15) % 24) * 3600
    out += [
        AuditEvent(
            ts=night + i * 60,
            actor="user-031",
            action="dataset.read",
            resource="dataset:team1-0",
            outcome="success",
            bytes=10**6,
        )
        for i in range(4)
    ]
    # Impossible travel: a token used half a world away 30 minutes after a login at home.
    g = home["user-012"]
    far = max(
        ((1.35, 103.82), (40.71, -74.01), (-33.87, 151.21)),
        key=lambda p: haversine_km(g.lat, g.lon, *p),
    )
    out.append(
        AccessEvent(
            ts=day + 6 * 3600,
            principal="user-012",
            action="login",
            outcome="success",
            geo=g,
            auth_method="sso",
        )
    )
    out.append(
        AccessEvent(
            ts=day + 6.5 * 3600,
            principal="user-012",
            action="token.use",
            outcome="success",
            source_ip="203.0.113.9",
            auth_method="token",
            geo=Geo(country="XX", lat=far[0], lon=far[1]),
        )
    )
    # Password guessing, then a success.
    out += [
        AccessEvent(
            ts=day + 12 * 3600 + i * 5,
            principal="user-013",
            action="login",
            outcome="failure",
            auth_method="password",
        )
        for i in range(20)
    ]
    out.append(
        AccessEvent(
            ts=day + 12 * 3600 + 120,
            principal="user-013",
            action="login",
            outcome="success",
            auth_method="password",
        )
    )
    # Login from a new country with a script's user agent.
    out.append(
        AccessEvent(
            ts=day + 13 * 3600,
            principal="user-014",
            action="login",
            outcome="success",
            auth_method="password",
            source_ip="198.51.100.1",
            user_agent="python-requests/2.31",
            geo=Geo(country="RU", lat=55.76, lon=37.62),
        )
    )
    # Privilege grant to oneself; training data and model changes; deletes.
    out.append(
        AuditEvent(
            ts=day + 14 * 3600,
            actor="user-016",
            action="role.assign",
            resource="role:admin:user-016",
            outcome="success",
        )
    )
    out.append(
        AuditEvent(
            ts=day + 14.5 * 3600,
            actor="user-017",
            action="dataset.write",
            resource="dataset:train-churn2",
            outcome="success",
            bytes=10**6,
        )
    )
    out.append(
        AuditEvent(
            ts=day + 15 * 3600,
            actor="user-018",
            action="model.update",
            resource="model:churn1:3",
            outcome="success",
        )
    )
    out.append(
        AuditEvent(
            ts=day + 15.5 * 3600,
            actor="user-019",
            action="dataset.delete",
            resource="dataset:train-churn4",
            outcome="success",
        )
    )
    expected = {
        "access.exfiltration": {"user-010"},
        "access.unusual_hours": {"user-031"},
        "access.impossible_travel": {"user-012"},
        "access.auth_failure_burst": {"user-013"},
        "access.new_location": {"user-014"},
        "access.privilege_grant": {"user-016"},
        "access.training_write": {"user-017"},
        "access.model_change": {"user-018"},
        "access.deletion": {"user-019"},
    }
    return out, expected


@pytest.mark.parametrize(
    "cls", [c for c in DETECTORS if c.name != "access.rare_resource"], ids=lambda c: c.name
)
def test_attackers_hidden_in_the_crowd_are_found_and_no_one_else(cls):
    events = list(traffic())
    attacks, expected = _attacks(events)
    attackers = {_subject(e) for e in attacks}
    stream = sorted(events + attacks, key=lambda e: e.ts)
    found: list[Finding] = feed(cls(), stream)
    who = {f.entity.id for f in found}
    assert expected[cls.name] <= who, [f.summary for f in found]
    assert who <= attackers, [f.summary for f in found if f.entity.id not in attackers]
