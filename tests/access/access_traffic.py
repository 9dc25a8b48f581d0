"""Multi-day benign access and audit traffic for many principals.

``benign_traffic()`` writes two weeks (by default) of what an ML platform's
identity provider and data/model registry log, for a population of:

- humans in nine cities on four continents, working weekdays in their local
  hours (start 7-10h, 7-10h a day), SSO login each morning, reads of their
  team's datasets (Zipf-like favourites), CLI tokens, model downloads for ML
  engineers, rare weekend work, a few denials (then a request for access);
- noisy but harmless humans: travellers who fly to another continent at
  airliner speed and work there for a few days; frequent password typos;
  month-end readers (three times their reads in the last days of the month);
  night owls whose usual hours run to midnight;
- administrators granting reader roles to others every workday;
- service accounts with steady 24/7 rhythms (tokens every 20 min, hourly
  reads from a fixed data-centre address);
- training pipelines: a daily ``pipeline.run`` (start, then finish) under
  their own service account, big reads of source data, chunked writes of the
  training set and of a dated feature snapshot, then ``model.register`` of a
  new version with the run id;
- retention jobs deleting a few dated partitions every night.

Everything is drawn from one seeded ``random.Random``: the same arguments give
the same events. The detectors should stay quiet on all of it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from detectors.events import AccessEvent, AuditEvent, Event, Geo

__all__ = ["CITIES", "T0", "benign_traffic"]

#: Monday 2026-01-19 00:00 UTC: two weeks from here include a month end.
T0 = 1_768_780_800.0
DAY = 86400.0
HOUR = 3600.0

#: name, country, lat, lon, civil UTC offset (hours)
CITIES = (
    ("Berlin", "DE", 52.52, 13.40, 1.0),
    ("Paris", "FR", 48.86, 2.35, 1.0),
    ("London", "GB", 51.51, -0.13, 0.0),
    ("New York", "US", 40.71, -74.01, -5.0),
    ("San Francisco", "US", 37.77, -122.42, -8.0),
    ("Bangalore", "IN", 12.97, 77.59, 5.5),
    ("Tokyo", "JP", 35.68, 139.69, 9.0),
    ("Sao Paulo", "BR", -23.55, -46.63, -3.0),
    ("Sydney", "AU", -33.87, 151.21, 11.0),
)
DATACENTERS = (("Frankfurt", "DE", 50.11, 8.68), ("Ashburn", "US", 39.04, -77.49))


@dataclass
class _Human:
    name: str
    city: tuple[str, str, float, float, float]
    team: int
    datasets: list[str]
    weights: list[float]
    models: list[str]
    start: float  # local hour
    length: float
    reads_per_hour: float
    median_bytes: float
    agent: str
    office_ip: str
    home_ip: str
    typo_rate: float = 0.02
    month_end: bool = False
    traveller: bool = False
    admin: bool = False
    night_owl: bool = False
    trips: list[tuple[float, float, tuple[str, str, float, float, float]]] = field(
        default_factory=list
    )


def _lognormal(rng: random.Random, median: float, sigma: float) -> int:
    return max(1, int(median * math.exp(rng.gauss(0.0, sigma))))


def benign_traffic(
    n_humans: int = 180,
    n_services: int = 30,
    n_pipelines: int = 8,
    days: int = 15,
    seed: int = 0,
    t0: float = T0,
) -> list[Event]:
    """Benign events of all principals, sorted by time."""
    rng = random.Random(seed)
    events: list[Event] = []
    n_teams = max(1, n_humans // 10)
    team_datasets = [[f"dataset:team{t}-{k}" for k in range(6)] for t in range(n_teams)]
    team_models = [[f"model:team{t}-m{k}" for k in range(2)] for t in range(n_teams)]
    shared = [f"dataset:ref-{k}" for k in range(4)]

    humans: list[_Human] = []
    for i in range(n_humans):
        team = i % n_teams
        city = CITIES[(team + (i // n_teams)) % len(CITIES)]
        own = rng.sample(team_datasets[team], rng.randint(3, 5)) + rng.sample(shared, 1)
        weights = [1.0 / (k + 1) for k in range(len(own))]
        h = _Human(
            name=f"user-{i:03d}",
            city=city,
            team=team,
            datasets=own,
            weights=weights,
            models=team_models[team] if rng.random() < 0.4 else [],
            start=rng.uniform(7.0, 10.0),
            length=rng.uniform(7.0, 10.0),
            reads_per_hour=rng.uniform(2.0, 8.0),
            median_bytes=rng.choice((2e6, 8e6, 3e7, 1e8)),
            agent=f"Mozilla/5.0 (laptop-{i}) Chrome/{rng.randint(118, 122)}",
            office_ip=f"10.{(team * 7) % 250}.{i % 250}.{rng.randint(2, 250)}",
            home_ip=f"198.51.{rng.randint(0, 250)}.{rng.randint(2, 250)}",
        )
        roll = i % 20
        if roll == 1:
            h.typo_rate = 0.3
        elif roll == 2:
            h.month_end = True
        elif roll == 3:
            h.traveller = True
        elif roll == 4:
            h.night_owl = True
            h.start, h.length = rng.uniform(13.0, 15.0), rng.uniform(8.0, 10.0)
        if i < 3:
            h.admin = True
        humans.append(h)

    for h in humans:
        if h.traveller:
            # One trip to another continent: fly out on day 3-5, back 4-6 days later.
            dest = rng.choice([c for c in CITIES if abs(c[3] - h.city[3]) > 40])
            out_day = rng.randint(3, 5)
            h.trips.append((t0 + out_day * DAY, t0 + (out_day + rng.randint(4, 6)) * DAY, dest))
        _human_events(h, rng, events, days, t0, humans)

    for k in range(n_services):
        _service_events(f"svc-app-{k:02d}", rng, events, days, t0, shared, team_datasets)
    for k in range(n_pipelines):
        _pipeline_events(k, rng, events, days, t0, team_datasets)
    for k in range(2):
        _retention_events(f"svc-retention-{k}", k, rng, events, days, t0)
    events.sort(key=lambda e: e.ts)  # type: ignore[arg-type,return-value]
    return events


def _place_at(h: _Human, ts: float) -> tuple[str, str, float, float, float]:
    for leave, back, dest in h.trips:
        if leave + 0.5 * DAY <= ts < back:
            return dest
    return h.city


def _human_events(
    h: _Human,
    rng: random.Random,
    out: list[Event],
    days: int,
    t0: float,
    everyone: list[_Human],
) -> None:
    for d in range(days):
        day0 = t0 + d * DAY
        weekday = d % 7 < 5
        if not weekday and rng.random() > 0.08:
            continue
        if any(leave <= day0 + 0.5 * DAY < leave + DAY for leave, _, _ in h.trips):
            continue  # travel day: on a plane, no work
        if any(back <= day0 + 0.5 * DAY < back + DAY for _, back, _ in h.trips):
            continue  # flying home
        city = _place_at(h, day0 + 0.5 * DAY)
        _, country, lat, lon, offset = city
        # Local working hours, in UTC.
        start_local = h.start + rng.gauss(0.0, 0.4)
        length = h.length * (1.0 if weekday else rng.uniform(0.15, 0.35))
        start = day0 + (start_local - offset) * HOUR
        end = start + length * HOUR
        at_home = rng.random() < 0.3
        ip = h.home_ip if at_home else h.office_ip
        geo = Geo(
            country=country,
            city=city[0],
            lat=lat + rng.uniform(-0.2, 0.2),
            lon=lon + rng.uniform(-0.2, 0.2),
        )
        t = start
        # Morning login, sometimes after typos.
        if rng.random() < h.typo_rate:
            for _ in range(rng.randint(1, 4)):
                out.append(
                    AccessEvent(
                        ts=t,
                        principal=h.name,
                        action="login",
                        outcome="failure",
                        source_ip=ip,
                        geo=geo,
                        auth_method="password",
                        user_agent=h.agent,
                    )
                )
                t += rng.uniform(5, 40)
        out.append(
            AccessEvent(
                ts=t,
                principal=h.name,
                action="login",
                outcome="success",
                source_ip=ip,
                geo=geo,
                auth_method="sso",
                user_agent=h.agent,
            )
        )
        token_day = rng.random() < 0.5
        if token_day:
            out.append(
                AccessEvent(
                    ts=t + 60,
                    principal=h.name,
                    action="token.issue",
                    outcome="success",
                    source_ip=ip,
                    geo=geo,
                    auth_method="sso",
                    user_agent="mlctl/3.2",
                )
            )
        in_month_end = h.month_end and _month_day(t) >= 28
        rate = h.reads_per_hour * (3.0 if in_month_end else 1.0)
        size = h.median_bytes * (3.0 if in_month_end else 1.0)
        t += rng.expovariate(rate / HOUR)
        while t < end:
            roll = rng.random()
            if roll < 0.85:
                ds = rng.choices(h.datasets, h.weights)[0]
                nbytes = _lognormal(rng, size, 1.0)
                out.append(
                    AuditEvent(
                        ts=t,
                        actor=h.name,
                        action="dataset.read",
                        resource=ds,
                        outcome="success",
                        resource_type="dataset",
                        bytes=nbytes,
                        records=max(1, nbytes // 400),
                        source_ip=ip,
                        user_agent=h.agent,
                    )
                )
            elif roll < 0.92 and h.models:
                model = rng.choice(h.models) + f":{rng.randint(1, 3)}"
                out.append(
                    AuditEvent(
                        ts=t,
                        actor=h.name,
                        action="model.download",
                        resource=model,
                        outcome="success",
                        resource_type="model",
                        bytes=_lognormal(rng, 4e8, 0.3),
                        source_ip=ip,
                        user_agent="mlctl/3.2",
                    )
                )
            elif roll < 0.97 and token_day:
                out.append(
                    AccessEvent(
                        ts=t,
                        principal=h.name,
                        action="token.use",
                        outcome="success",
                        resource="endpoint:feature-store",
                        source_ip=ip,
                        geo=geo,
                        auth_method="token",
                        user_agent="mlctl/3.2",
                    )
                )
            elif roll < 0.975:
                # Denied on another team's dataset, then back to work.
                other = f"dataset:team{h.team + 1}-{rng.randint(0, 5)}"
                out.append(
                    AuditEvent(
                        ts=t,
                        actor=h.name,
                        action="dataset.read",
                        resource=other,
                        outcome="denied",
                        resource_type="dataset",
                        source_ip=ip,
                    )
                )
            elif h.admin:
                grantee = rng.choice(everyone).name
                out.append(
                    AuditEvent(
                        ts=t,
                        actor=h.name,
                        action="role.assign",
                        resource=f"role:reader-team{rng.randint(0, 16)}",
                        outcome="success",
                        resource_type="role",
                        source_ip=ip,
                        attributes={"grantee": grantee},
                    )
                )
            t += rng.expovariate(rate / HOUR)
        if h.admin:  # at least one grant every workday
            out.append(
                AuditEvent(
                    ts=start + HOUR,
                    actor=h.name,
                    action="role.assign",
                    resource=f"role:reader-team{rng.randint(0, 16)}",
                    outcome="success",
                    resource_type="role",
                    source_ip=ip,
                    attributes={"grantee": rng.choice(everyone).name},
                )
            )


def _month_day(ts: float) -> int:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).day


def _service_events(
    name: str,
    rng: random.Random,
    out: list[Event],
    days: int,
    t0: float,
    shared: list[str],
    team_datasets: list[list[str]],
) -> None:
    city, country, lat, lon = rng.choice(DATACENTERS)
    ip = f"172.20.{rng.randint(0, 250)}.{rng.randint(2, 250)}"
    geo = Geo(country=country, city=city, lat=lat, lon=lon)
    sources = [rng.choice(shared), rng.choice(rng.choice(team_datasets))]
    median = rng.choice((5e6, 5e7, 2e8))
    t = t0 + rng.uniform(0, 1200)
    end = t0 + days * DAY
    next_issue = t
    next_read = t + rng.uniform(0, HOUR)
    while t < end:
        if t >= next_issue:
            out.append(
                AccessEvent(
                    ts=t,
                    principal=name,
                    action="token.issue",
                    outcome="success",
                    source_ip=ip,
                    geo=geo,
                    auth_method="certificate",
                    user_agent="svc-agent/2.1",
                )
            )
            next_issue = t + 12 * HOUR
        out.append(
            AccessEvent(
                ts=t,
                principal=name,
                action="token.use",
                outcome="success",
                resource="endpoint:scoring",
                source_ip=ip,
                geo=geo,
                auth_method="token",
                user_agent="svc-agent/2.1",
            )
        )
        while next_read <= t:
            nbytes = _lognormal(rng, median, 0.3)
            out.append(
                AuditEvent(
                    ts=next_read,
                    actor=name,
                    action="dataset.read",
                    resource=rng.choice(sources),
                    outcome="success",
                    resource_type="dataset",
                    bytes=nbytes,
                    records=nbytes // 300,
                    source_ip=ip,
                    user_agent="svc-agent/2.1",
                )
            )
            next_read += HOUR + rng.uniform(-300, 300)
        t += 1200 + rng.uniform(-120, 120)


def _pipeline_events(
    k: int,
    rng: random.Random,
    out: list[Event],
    days: int,
    t0: float,
    team_datasets: list[list[str]],
) -> None:
    name = f"svc-pipeline-{k}"
    model = f"churn{k}"
    ip = f"172.21.{k}.10"
    hour = 1 + 2 * k % 22  # each pipeline has its own nightly slot (UTC)
    train = f"dataset:train-{model}"
    sources = team_datasets[k % len(team_datasets)][:3]
    for d in range(days):
        t = t0 + d * DAY + hour * HOUR + rng.uniform(0, 600)
        run_id = f"{name}-{d}"
        out.append(
            AuditEvent(
                ts=t,
                actor=name,
                action="pipeline.run",
                resource=f"pipeline:{model}-nightly",
                outcome="success",
                source_ip=ip,
                attributes={"run_id": run_id, "status": "started"},
            )
        )
        t += rng.uniform(30, 120)
        for src in sources:
            nbytes = _lognormal(rng, 2e9, 0.2)
            out.append(
                AuditEvent(
                    ts=t,
                    actor=name,
                    action="dataset.read",
                    resource=src,
                    outcome="success",
                    resource_type="dataset",
                    bytes=nbytes,
                    records=nbytes // 500,
                    source_ip=ip,
                )
            )
            t += rng.uniform(60, 300)
        snapshot = f"dataset:features-{model}-d{d:02d}"
        for _ in range(rng.randint(3, 6)):
            nbytes = _lognormal(rng, 2e8, 0.2)
            out.append(
                AuditEvent(
                    ts=t,
                    actor=name,
                    action="dataset.write",
                    resource=train,
                    outcome="success",
                    resource_type="dataset",
                    bytes=nbytes,
                    records=nbytes // 500,
                    source_ip=ip,
                )
            )
            out.append(
                AuditEvent(
                    ts=t + 5,
                    actor=name,
                    action="dataset.write",
                    resource=snapshot,
                    outcome="success",
                    resource_type="dataset",
                    bytes=nbytes // 4,
                    records=nbytes // 2000,
                    source_ip=ip,
                )
            )
            t += rng.uniform(60, 400)
        t += rng.uniform(600, 2400)
        out.append(
            AuditEvent(
                ts=t,
                actor=name,
                action="model.register",
                resource=f"model:{model}:{d + 1}",
                outcome="success",
                resource_type="model",
                bytes=_lognormal(rng, 3e8, 0.1),
                source_ip=ip,
                attributes={"run_id": run_id},
            )
        )
        out.append(
            AuditEvent(
                ts=t + 30,
                actor=name,
                action="pipeline.run",
                resource=f"pipeline:{model}-nightly",
                outcome="success",
                source_ip=ip,
                attributes={"run_id": run_id, "status": "succeeded"},
            )
        )


def _retention_events(
    name: str, k: int, rng: random.Random, out: list[Event], days: int, t0: float
) -> None:
    ip = f"172.22.0.{k + 5}"
    for d in range(days):
        t = t0 + d * DAY + (3 + k) * HOUR + rng.uniform(0, 300)
        for j in range(rng.randint(3, 6)):
            out.append(
                AuditEvent(
                    ts=t + j * 20,
                    actor=name,
                    action="dataset.delete",
                    resource=f"dataset:logs{k}-old-{d}-{j}",
                    outcome="success",
                    resource_type="dataset",
                    source_ip=ip,
                )
            )
