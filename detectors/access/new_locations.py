"""Sign-ins and token use from a country, network or client a principal never used.

Per-principal state, exact under the ``partition`` scope.
"""

from __future__ import annotations

from typing import ClassVar, Final

from detectors.access.audit_fields import (
    ATLAS_ACCOUNTS,
    ip_prefix,
    model_id_of,
)
from detectors.access.baselines import NoveltyRate
from detectors.base import Detector
from detectors.events import AccessEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import Cooldown, EntityTable
from detectors.state_codec import state_type

__all__ = ["NewLocationDetector"]

_MAX_PLACES: Final = 64
_MAX_AGENTS: Final = 32


@state_type("access.places")
class _Places(Cooldown):
    __slots__ = (
        "agents",
        "countries",
        "first_ts",
        "last_login_country",
        "n",
        "new_rate",
        "prefixes",
    )

    def __init__(self, ts: float) -> None:
        super().__init__()
        self.countries: dict[str, int] = {}
        self.prefixes: dict[str, int] = {}
        self.agents: dict[str, int] = {}
        self.first_ts = ts
        self.n = 0
        self.new_rate = NoveltyRate()  # of networks, over machine-credential uses
        self.last_login_country: str | None = None


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
        if warm and not st.cooling_down(ts):
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
                st.start_cooldown(ts, self.cooldown_seconds)
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
                atlas=ATLAS_ACCOUNTS,
                event_ts=ts,
                sources=[source],
            )
        ]
