"""Suspicious access: impossible travel, failure bursts, new places, rare pairs, grants.

State is per principal (exact under the ``partition`` scope: access events are
keyed by the principal, audit events by the actor) except the per-resource
accessor sets of :class:`RareResourceDetector`, which see only the principals
of the same partition; see that class for what it implies.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar, Final

from detectors.access._common import (
    NoveltyRate,
    haversine_km,
    ip_prefix,
    model_id_of,
    resource_tokens,
    verb_of,
)
from detectors.base import Detector
from detectors.events import AccessEvent, AuditEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = [
    "AuthFailureBurstDetector",
    "ImpossibleTravelDetector",
    "NewLocationDetector",
    "PrivilegeGrantDetector",
    "RareResourceDetector",
]

#: AML.T0012 Valid Accounts: credentials used by someone other than their owner.
_ATLAS_ACCOUNTS: Final = ["AML.T0012"]


@state_type("access.place")
class _Place:
    __slots__ = ("city", "cooldown_until", "country", "ip", "lat", "lon", "ts")

    def __init__(self) -> None:
        self.ts = -math.inf
        self.lat = 0.0
        self.lon = 0.0
        self.country: str | None = None
        self.city: str | None = None
        self.ip: str | None = None
        self.cooldown_until = -math.inf


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
            if effective >= self.min_distance_km and ts >= st.cooldown_until:
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
        st.cooldown_until = ts + self.cooldown_seconds
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
                atlas=_ATLAS_ACCOUNTS,
                event_ts=ts,
                sources=[source],
            )
        ]



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
                atlas=_ATLAS_ACCOUNTS if channel == 0 else [],
                event_ts=ts,
                sources=[source],
            )
        ]



#: Countries, networks and user agents remembered per principal at most.
_MAX_PLACES: Final = 64
_MAX_AGENTS: Final = 32


@state_type("access.places")
class _Places:
    __slots__ = (
        "agents",
        "cooldown_until",
        "countries",
        "first_ts",
        "last_login_country",
        "n",
        "new_rate",
        "prefixes",
    )

    def __init__(self, ts: float) -> None:
        self.countries: dict[str, int] = {}
        self.prefixes: dict[str, int] = {}
        self.agents: dict[str, int] = {}
        self.first_ts = ts
        self.n = 0
        self.new_rate = NoveltyRate()  # of networks, over machine-credential uses
        self.last_login_country: str | None = None
        self.cooldown_until = -math.inf


def _remember(seen: dict[str, int], key: str, cap: int) -> None:
    """Count ``key``; when full, forget the entry seen least (ties: oldest)."""
    if key in seen:
        seen[key] += 1
        return
    if len(seen) >= cap:
        del seen[min(seen, key=seen.__getitem__)]
    seen[key] = 1


class NewLocationDetector(Detector):
    """A principal's credentials used from a country or network it never used.

    After a warm-up (``warmup_events`` successful events over at least
    ``warmup_seconds``), per principal:

    - a login from a country never seen before is reported, unless it comes
      from a known device (user agent) with strong authentication (``mfa``,
      ``sso``, ``certificate``): that is a traveller with their own laptop;
    - a token used (``token.use``) from a country never seen, and not the
      country of the principal's last login, is reported (tokens are bearer
      credentials: a stolen one works anywhere);
    - a machine credential (``token``, ``api_key``, ``certificate``, or a
      ``token.use``) used from a new network (/24 or /48) by a principal whose
      networks are stable (EWMA rate of new networks below
      ``max_new_network_rate``) is reported: service accounts do not roam.

    One finding per principal per ``cooldown_seconds``.

    >>> from detectors.events import AccessEvent, Geo
    >>> from detectors.findings import Source
    >>> det = NewLocationDetector(warmup_events=5, warmup_seconds=0)
    >>> def use(t, country, ip, action="token.use", ua="cli/1.0"):
    ...     ev = AccessEvent(ts=t, principal="svc-etl", action=action, outcome="success",
    ...                      source_ip=ip, auth_method="token", user_agent=ua,
    ...                      geo=Geo(country=country))
    ...     return det.process(ev, Source("ml.access", 0, int(t)))
    >>> [use(t * 300.0, "DE", "10.0.0.5") for t in range(300)].count(None)
    300
    >>> found = use(90_000.0, "DE", "198.51.100.9")
    >>> found[0].evidence["rule"], found[0].severity
    ('new_network', 'medium')
    >>> use(99_000.0, "BR", "203.0.113.4", ua="python-requests/2.31")[0].severity
    'high'
    """

    name: ClassVar[str] = "access.new_location"
    state_fields: ClassVar[tuple[str, ...]] = ("table",)
    event_types: ClassVar[frozenset[str]] = frozenset({"access"})

    def __init__(
        self,
        warmup_events: int = 10,
        warmup_seconds: float = 3 * 86400.0,
        max_new_network_rate: float = 0.02,
        network_alpha: float = 0.005,
        cooldown_seconds: float = 3600.0,
        login_actions: tuple[str, ...] = ("login", "token.issue"),
        token_actions: tuple[str, ...] = ("token.use",),
        strong_auth: tuple[str, ...] = ("mfa", "sso", "certificate"),
        machine_auth: tuple[str, ...] = ("token", "api_key", "certificate"),
        max_principals: int = 100_000,
    ) -> None:
        if not 0 < network_alpha < 1:
            raise ValueError("network_alpha must be in (0, 1)")
        self.warmup_events = warmup_events
        self.warmup_seconds = warmup_seconds
        self.max_new_network_rate = max_new_network_rate
        self.network_alpha = network_alpha
        self.cooldown_seconds = cooldown_seconds
        self.login_actions = frozenset(login_actions)
        self.token_actions = frozenset(token_actions)
        self.strong_auth = frozenset(strong_auth)
        self.machine_auth = frozenset(machine_auth)
        self.table: EntityTable[_Places] = EntityTable(max_principals)

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, AccessEvent)
        if event.outcome != "success":
            return None
        action = event.action
        is_login = action in self.login_actions
        is_token = action in self.token_actions
        if not (is_login or is_token):
            return None
        ts: float = event.ts  # type: ignore[assignment]
        st = self.table.touch(event.principal, lambda: _Places(ts))
        geo = event.geo
        country = geo.country if geo is not None else None
        ip = event.source_ip
        prefix = ip_prefix(ip) if ip else None
        agent = event.user_agent
        machine = is_token or event.auth_method in self.machine_auth
        warm = st.n >= self.warmup_events and ts - st.first_ts >= self.warmup_seconds
        found: list[Finding] | None = None
        if warm and ts >= st.cooldown_until:
            rule: str | None = None
            severity: Severity = "medium"
            known_agent = agent is not None and agent in st.agents
            if country is not None and country not in st.countries:
                if is_token and country == st.last_login_country:
                    pass  # explained by the login from there, which was judged itself
                elif is_token:
                    rule = "token_new_country"
                    severity = "medium" if known_agent else "high"
                elif not (known_agent and event.auth_method in self.strong_auth):
                    rule = "login_new_country"
                    weak = event.auth_method not in self.strong_auth
                    severity = "high" if weak and not known_agent else "medium"
            elif (
                machine
                and prefix is not None
                and prefix not in st.prefixes
                and st.new_rate.rate() < self.max_new_network_rate
            ):
                rule = "new_network"
            if rule is not None:
                st.cooldown_until = ts + self.cooldown_seconds
                found = self._finding(event, source, st, rule, severity, country, prefix, ts)
        st.n += 1
        if country is not None:
            _remember(st.countries, country, _MAX_PLACES)
            if is_login:
                st.last_login_country = country
        if prefix is not None:
            if machine:
                st.new_rate.update(prefix not in st.prefixes, self.network_alpha)
            _remember(st.prefixes, prefix, _MAX_PLACES)
        if agent is not None:
            _remember(st.agents, agent, _MAX_AGENTS)
        return found

    def _finding(
        self,
        event: AccessEvent,
        source: Source,
        st: _Places,
        rule: str,
        severity: Severity,
        country: str | None,
        prefix: str | None,
        ts: float,
    ) -> list[Finding]:
        who = event.principal
        known = sorted(st.countries, key=st.countries.__getitem__, reverse=True)[:5]
        if rule == "new_network":
            summary = (
                f"Machine credential of {who} used from network {prefix} for the first time; "
                f"its networks are stable (new-network rate {st.new_rate.rate():.2%} over "
                f"{st.n} uses, {len(st.prefixes)} known)."
            )
        else:
            verb = "token used" if rule == "token_new_country" else f"{event.action} succeeded"
            summary = (
                f"Principal {who}: {verb} from {country}, a country never seen in its "
                f"{st.n} earlier events (usual: {', '.join(known) or 'none'})."
            )
        return [
            Finding.build(
                detector=self.name,
                kind="suspicious_access",
                severity=severity,
                entity=Entity("principal", who),
                model_id=model_id_of(event.resource),
                summary=summary,
                evidence={
                    "rule": rule,
                    "country": country,
                    "network": prefix,
                    "source_ip": event.source_ip,
                    "known_countries": known,
                    "known_networks": len(st.prefixes),
                    "new_network_rate": round(st.new_rate.rate(), 5),
                    "threshold_new_network_rate": self.max_new_network_rate,
                    "last_login_country": st.last_login_country,
                    "known_user_agent": event.user_agent in st.agents,
                    "auth_method": event.auth_method,
                    "action": event.action,
                    "events_examined": st.n,
                },
                atlas=_ATLAS_ACCOUNTS,
                event_ts=ts,
                sources=[source],
            )
        ]



@state_type("access.pairs")
class _Pairs:
    __slots__ = ("cooldown_until", "counts", "first_ts", "n", "new_rate")

    def __init__(self, ts: float) -> None:
        self.counts: dict[str, int] = {}
        self.first_ts = ts
        self.n = 0
        self.new_rate = NoveltyRate()  # of first touches among the principal's events
        self.cooldown_until = -math.inf


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
            or ts < st.cooldown_until
        ):
            return None
        st.cooldown_until = ts + self.cooldown_seconds
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

