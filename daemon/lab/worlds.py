"""Seeded worlds: labelled traffic from many different ML platforms, not one.

``mlwatchd simulate`` draws one platform; detectors tuned on it can fail on
the next. A :class:`World` is drawn from a seed and varies what a new
deployment meets:

- **victim shape** behind the attacked endpoint (:mod:`daemon.lab.victims`):
  a 10-class image model with 64 pixel features, a 2-class tabular model with
  30 named features of very different scales sent as an object, a regression
  model, an embedding input. ``seed % 4`` picks the shape and
  ``(seed // 4) % 2`` the **stealth pacing** (inference attackers pace like
  the world's heaviest benign caller), so any 8 consecutive seeds cover all;
- **pipelines**: how many, run how often, and under which identities: one
  service account for everything, or an orchestrator that writes
  ``pipeline.run`` start/end while worker accounts (ETL, trainer) write the
  dataset and update the model carrying the same run id in ``attributes``
  (``run_id`` or ``pipeline_run_id``);
- **data**: how many datasets and model versions exist, who reads them,
  daily volumes, the people's time zones and offices, travel, mistyped
  passwords, night owls;
- **callers** of the victim: interactive apps, batch scorers (a nightly
  burst), retrying clients (the same input again within seconds), callers
  that repeat a small set of inputs, callers with their own noise and
  segment, heavy callers; and the daily volume;
- **history**: days before the attack day (from none: ``days=1``);
- **attacks**: a drawn subset of the simulator's scenarios (extraction,
  knockoff extraction, probing, query flood, exfiltration, poisoning write,
  model tampering, impossible travel, failed-auth burst, self-granted role,
  input drift) by entities drawn from the world's own population.

Ground truth travels as in ``mlwatchd simulate``: each attack event's
:attr:`SimEvent.scenario`; the world's :attr:`World.scenarios` maps scenario
names to the entity a finding must name (:func:`daemon.lab.evaluate.score`).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from daemon.lab.scenarios import DAY, HOUR, T0, Scenario, SimEvent
from daemon.lab.victims import SHAPES, Victim, victim
from detectors.access.audit_fields import haversine_km

__all__ = ["World", "WorldSpec", "draw", "world_events"]

# country -> (city, lat, lon, utc offset hours, ip prefix)
_PLACES: Final = {
    "DE": ("Berlin", 52.52, 13.40, 1.0, "198.18.1"),
    "US": ("New York", 40.71, -74.01, -5.0, "198.18.2"),
    "IN": ("Bengaluru", 12.97, 77.59, 5.5, "198.18.3"),
    "FR": ("Paris", 48.86, 2.35, 1.0, "198.18.4"),
    "BR": ("Sao Paulo", -23.55, -46.63, -3.0, "198.18.5"),
    "JP": ("Tokyo", 35.68, 139.69, 9.0, "198.18.6"),
    "GB": ("London", 51.51, -0.13, 0.0, "198.18.7"),
    "SG": ("Singapore", 1.35, 103.82, 8.0, "198.18.8"),
    "AU": ("Sydney", -33.87, 151.21, 11.0, "198.18.9"),
    "CA": ("Vancouver", 49.28, -123.12, -8.0, "198.18.10"),
}

#: Every scenario a world may plant, with the kinds that count as detecting it.
_KINDS: Final[dict[str, tuple[str, ...]]] = {
    "model_extraction": ("model_extraction",),
    "knockoff_extraction": ("model_extraction",),
    "adversarial_probing": ("adversarial_probing",),
    "query_flood": ("denial_of_service",),
    "exfiltration": ("exfiltration",),
    "training_write": ("data_poisoning",),
    "model_tampering": ("model_tampering", "data_poisoning"),
    "impossible_travel": ("suspicious_access",),
    "brute_force": ("suspicious_access",),
    "self_grant": ("suspicious_access",),
    "input_drift": ("drift", "confidence_drop", "performance_drop", "input_integrity"),
}
SCENARIO_NAMES: Final = tuple(_KINDS)
#: Scenarios that send inference queries (paced like a heavy caller when stealthy).
_INFERENCE_ATTACKS: Final = ("model_extraction", "knockoff_extraction", "adversarial_probing")


@dataclass(frozen=True)
class Person:
    name: str
    country: str
    role: str  # analyst | engineer | admin
    start_hour: float  # local time the working day starts
    datasets: tuple[str, ...]
    read_bytes: float  # typical bytes of one read
    reads_per_day: float
    downloads_models: bool
    mistypes: bool
    travels: bool


@dataclass(frozen=True)
class Pipeline:
    name: str
    orchestrator: str
    etl: str      # == orchestrator when one identity runs everything
    trainer: str
    dataset: str  # the training dataset it appends to
    model: str    # model id it trains
    runs_per_day: int
    first_hour: float
    updates_in_place: bool  # model.update of the serving version, or model.register a new one
    run_key: str  # attributes key of the run id


@dataclass(frozen=True)
class Caller:
    name: str
    habit: str  # interactive | batch | retrying | repeating | noisy | heavy
    per_day: float
    country: str
    noise: float
    offset: float


@dataclass(frozen=True)
class WorldSpec:
    """Everything drawn from the seed; the traffic follows from it."""

    seed: int
    days: int
    victim: str
    stealth: bool
    people: tuple[Person, ...]
    pipelines: tuple[Pipeline, ...]
    callers: tuple[Caller, ...]
    datasets: tuple[str, ...]
    models: tuple[str, ...]   # model ids with registered versions (victim first)
    versions: int             # registered versions per model so far
    streaming_etl: bool       # an ingest account also appends outside pipeline runs
    label_rate: float
    attacks: tuple[str, ...]


@dataclass
class World:
    spec: WorldSpec
    events: list[SimEvent]
    scenarios: dict[str, Scenario]  # name -> the entity a detecting finding names
    roles: dict[str, str] = field(default_factory=dict)  # entity id -> what it is


_FIRST: Final = ("ana", "ben", "chen", "dara", "eli", "fatima", "gus", "hana", "ivan", "jo",
                 "kemal", "lena", "mo", "nia", "omar", "priya", "quinn", "rosa", "sam", "tariq",
                 "uma", "vik", "wen", "xena", "yusuf", "zoe")
_DATASET_WORDS: Final = ("customers", "transactions", "clickstream", "tickets", "labels",
                         "features", "images", "sessions", "payments", "claims", "events",
                         "catalog", "reviews", "logs", "ledger", "devices")


def draw(seed: int, days: int | None = None, scale: float = 1.0) -> WorldSpec:
    """The world of ``seed``.

    ``days`` overrides the drawn number of days (history plus the attack day);
    ``scale`` multiplies the benign inference volume (tests use small worlds).
    """
    rng = random.Random(seed * 7919 + 17)
    shape = SHAPES[seed % len(SHAPES)]
    stealth = (seed // len(SHAPES)) % 2 == 1
    # Its own stream, so that overriding ``days`` leaves the rest of the world as drawn.
    drawn_days = random.Random(seed * 31 + 1).choice((1, 2, 2, 3, 5, 8))
    n_days = days if days is not None else drawn_days
    if n_days < 1 or scale <= 0:
        raise ValueError("days must be >= 1 and scale > 0")
    offices = rng.sample(list(_PLACES), rng.randint(1, 3))
    main_model = victim(shape).model_id
    other_models = rng.sample(("fraud-scorer", "churn", "ranker", "forecast", "ocr", "spam"),
                              rng.randint(1, 4))
    models = (main_model, *other_models)
    n_datasets = rng.choice((6, 10, 16, 30, 60))
    datasets = tuple(f"dataset:{rng.choice(_DATASET_WORDS)}-{i:02d}" for i in range(n_datasets))
    train_sets = tuple(f"dataset:train-{m}" for m in models)
    all_sets = train_sets + datasets
    # People: read a few datasets each, popular ones more often (Zipf).
    popularity = [1.0 / (i + 1) ** rng.uniform(0.6, 1.2) for i in range(len(all_sets))]
    people: list[Person] = []
    for i in range(rng.randint(12, 60)):
        country = rng.choice(offices) if rng.random() < 0.85 else rng.choice(list(_PLACES))
        role = rng.choices(("analyst", "engineer", "admin"), (6, 3, 1))[0]
        k = min(len(all_sets), max(1, int(rng.lognormvariate(1.0, 0.6))))
        chosen: set[str] = set()
        while len(chosen) < k:
            chosen.add(rng.choices(all_sets, popularity)[0])
        people.append(Person(
            name=f"{rng.choice(_FIRST)}.{chr(97 + i % 26)}{i:02d}", country=country, role=role,
            start_hour=rng.choice((7.0, 8.0, 9.0, 9.0, 10.0, 11.0, 14.0 if rng.random() < 0.1
                                   else 9.5)),
            datasets=tuple(sorted(chosen)), read_bytes=rng.lognormvariate(16.5, 1.2),
            reads_per_day=rng.uniform(1, 10), downloads_models=(role == "engineer"
                                                                and rng.random() < 0.6),
            mistypes=rng.random() < 0.12, travels=rng.random() < 0.05))
    # Pipelines: one per trained model, most with separate identities.
    pipelines: list[Pipeline] = []
    orchestrator = rng.choice(("svc-airflow", "svc-orchestrator", "dagster-prod", "argo-wf"))
    for j, model in enumerate(models[:rng.randint(1, len(models))]):
        single = rng.random() < 0.3
        own = f"svc-{model}-pipe"
        pipelines.append(Pipeline(
            name=f"pipeline:{model}-train", orchestrator=own if single else orchestrator,
            etl=own if single else rng.choice(("svc-etl", f"svc-etl-{j}", "svc-ingest")),
            trainer=own if single else rng.choice(("svc-trainer", f"svc-train-{j}",
                                                   "svc-ml-train")),
            dataset=train_sets[j], model=model, runs_per_day=rng.choice((1, 1, 2, 4, 6)),
            first_hour=rng.uniform(0, 6), updates_in_place=rng.random() < 0.5,
            run_key=rng.choice(("run_id", "pipeline_run_id"))))
    # Callers of the victim model.
    volume = rng.choice((8_000, 15_000, 30_000, 60_000)) * scale
    habits = ("interactive", "batch", "retrying", "repeating", "noisy", "heavy")
    callers: list[Caller] = []
    for i in range(rng.randint(6, 30)):
        habit = rng.choices(habits, (5, 1, 2, 1, 3, 1))[0]
        callers.append(Caller(f"{rng.choice(('app', 'svc', 'api', 'key'))}-{i:02d}", habit,
                              rng.lognormvariate(0, 1.0) * (4.0 if habit == "heavy" else 1.0),
                              rng.choice(offices), rng.uniform(0.2, 1.5) if habit == "noisy"
                              else 0.0, rng.gauss(0, 0.8) if rng.random() < 0.5 else 0.0))
    if not any(c.habit == "heavy" for c in callers):
        callers.append(Caller(f"app-{len(callers):02d}", "heavy", 6.0, offices[0], 0.0, 0.0))
    total = sum(c.per_day for c in callers)
    callers = [Caller(c.name, c.habit, volume * c.per_day / total, c.country, c.noise, c.offset)
               for c in callers]
    attacks = tuple(s for s in SCENARIO_NAMES if rng.random() < 0.8)
    if not any(a in attacks for a in _INFERENCE_ATTACKS):
        attacks = ("model_extraction", *attacks)
    spec = WorldSpec(
        seed=seed, days=n_days, victim=shape, stealth=stealth, people=tuple(people),
        pipelines=tuple(pipelines), callers=tuple(callers), datasets=all_sets, models=models,
        versions=rng.randint(2, 12), streaming_etl=rng.random() < 0.4,
        label_rate=rng.choice((0.0, 0.02, 0.1)), attacks=attacks)
    return spec


class _Writer:
    """Builds the events; ``np`` and ``random`` generators both seeded from the world."""

    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed * 104729 + 3)
        self.np = np.random.default_rng(spec.seed + 1_000_003)
        self.events: list[SimEvent] = []
        self.n = 0
        self.victim: Victim = victim(spec.victim)

    def inference(self, ts: Any, who: str, x: Any, scenario: str | None = None,
                  label_rate: float = 0.0) -> None:
        if len(x) == 0:
            return
        v = self.victim
        preds, proba = v.answer(x)
        for i in range(len(x)):
            self.n += 1
            t = float(ts[i])
            body: dict[str, Any] = {
                "event_type": "inference", "ts": round(t, 3), "model_id": v.model_id,
                "model_version": str(self.spec.versions), "request_id": f"r{self.n:09d}",
                "principal": who, "features": v.wire(x[i]), "prediction": preds[i],
                "latency_ms": round(2 + 20 * self.rng.random(), 1)}
            if proba is not None:
                body["probabilities"] = [round(float(p), 5) for p in proba[i]]
            if label_rate and self.rng.random() < label_rate:
                body["label"] = preds[i] if self.rng.random() < 0.9 or v.classes < 2 \
                    else (int(preds[i]) + 1) % v.classes
            self.events.append(SimEvent(t, "inference", who, body, scenario))

    def audit(self, ts: float, actor: str, action: str, resource: str,
              scenario: str | None = None, outcome: str = "success",
              attributes: dict[str, Any] | None = None, **extra: Any) -> None:
        body = {"event_type": "audit", "ts": round(ts, 3), "actor": actor, "action": action,
                "resource": resource, "outcome": outcome, **extra}
        if attributes:
            body["attributes"] = attributes
        self.events.append(SimEvent(ts, "audit", actor, body, scenario))

    def access(self, ts: float, who: str, country: str, outcome: str = "success",
               action: str = "login", method: str = "sso", ip: str | None = None,
               scenario: str | None = None) -> None:
        city, lat, lon, _, prefix = _PLACES[country]
        body = {"event_type": "access", "ts": round(ts, 3), "principal": who, "action": action,
                "outcome": outcome, "auth_method": method,
                "source_ip": ip or f"{prefix}.{(sum(map(ord, who)) % 200) + 10}",
                "geo": {"country": country, "city": city, "lat": lat, "lon": lon}}
        self.events.append(SimEvent(ts, "access", who, body, scenario))


def _people(w: _Writer) -> None:
    rng, spec = w.rng, w.spec
    for p in spec.people:
        last: tuple[float, str] | None = None  # last login: time, country
        for day in range(spec.days):
            if day % 7 >= 5 and rng.random() < 0.85:
                continue
            if rng.random() < 0.08:  # leave, sick days
                continue
            country = p.country
            if p.travels and day > 0 and rng.random() < 0.3:  # a business trip (day-long flight)
                country = rng.choice([c for c in _PLACES if c != p.country])
            start = T0 + day * DAY + (p.start_hour - _PLACES[country][3]) * HOUR \
                + rng.gauss(0, 0.5) * HOUR
            if last is not None and last[1] != country:  # not before the plane lands
                a, b = _PLACES[last[1]], _PLACES[country]
                flight = haversine_km(a[1], a[2], b[1], b[2]) / 800.0 + 4.0
                start = max(start, last[0] + flight * HOUR)
            last = (start, country)
            if p.mistypes and rng.random() < 0.3:
                for k in range(rng.randint(1, 3)):
                    w.access(start - 90 + k * 20, p.name, country, "failure", method="password")
            w.access(start, p.name, country)
            for _ in range(max(1, int(rng.expovariate(1.0 / p.reads_per_day)))):
                t = start + rng.uniform(0.1, 9.0) * HOUR
                size = int(p.read_bytes * rng.lognormvariate(0, 0.6))
                w.audit(t, p.name, "dataset.read", rng.choice(p.datasets), bytes=size,
                        records=max(1, size // 350), resource_type="dataset",
                        source_ip=f"{_PLACES[country][4]}.20")
            if p.downloads_models and rng.random() < 0.3:
                model = rng.choice(spec.models)
                version = rng.randint(max(1, spec.versions - 2), spec.versions)
                w.audit(start + rng.uniform(0.5, 8) * HOUR, p.name, "model.download",
                        f"model:{model}:{version}", bytes=int(rng.lognormvariate(18, 1)),
                        resource_type="model")


def _services(w: _Writer) -> None:
    rng, spec = w.rng, w.spec
    runs = 0
    for day in range(spec.days):
        base = T0 + day * DAY
        for p in spec.pipelines:
            for r in range(p.runs_per_day):
                runs += 1
                run_id = f"{p.name.split(':')[1]}-{day:03d}-{r}-{rng.getrandbits(24):06x}"
                attrs = {p.run_key: run_id}
                t = base + (p.first_hour + r * 24 / p.runs_per_day) * HOUR + rng.uniform(0, 300)
                w.audit(t, p.orchestrator, "pipeline.run", p.name,
                        attributes={**attrs, "phase": "start"}, resource_type="pipeline")
                rows = int(rng.lognormvariate(9, 0.4))
                w.audit(t + rng.uniform(30, 300), p.etl, "dataset.write", p.dataset,
                        bytes=rows * 420, records=rows, resource_type="dataset",
                        attributes=attrs)
                w.audit(t + rng.uniform(400, 900), p.trainer, "dataset.read", p.dataset,
                        bytes=rows * 420 * 20, records=rows * 20, resource_type="dataset",
                        attributes=attrs)
                done = t + rng.uniform(1200, 3600)
                if p.updates_in_place:
                    w.audit(done, p.trainer, "model.update", f"model:{p.model}:{spec.versions}",
                            resource_type="model", attributes=attrs)
                else:
                    w.audit(done, p.trainer, "model.register",
                            f"model:{p.model}:{spec.versions + runs}", resource_type="model",
                            attributes=attrs)
                w.audit(done + rng.uniform(10, 120), p.orchestrator, "pipeline.run", p.name,
                        attributes={**attrs, "phase": "end", "status": "success"},
                        resource_type="pipeline")
        if spec.streaming_etl:  # ingest appends outside pipeline runs, every two hours
            for hour in range(0, 24, 2):
                rows = int(rng.lognormvariate(7.5, 0.3))
                w.audit(base + hour * HOUR + rng.uniform(0, 600), "svc-ingest", "dataset.write",
                        spec.datasets[len(spec.pipelines)], bytes=rows * 300, records=rows,
                        resource_type="dataset")
        for hour in range(24):
            w.access(base + hour * HOUR + rng.uniform(0, 60), "svc-monitor",
                     spec.people[0].country, action="token.use", method="token")


def _caller_times(w: _Writer, c: Caller, day: int) -> Any:
    """Event times of one caller's day, by habit (local working hours, nightly batches)."""
    r = w.np
    base = T0 + day * DAY
    tz = _PLACES[c.country][3]
    n = int(r.poisson(c.per_day))
    if n == 0:
        return np.empty(0)
    if c.habit == "batch":  # one nightly job, tightly packed
        start = base + ((1.0 - tz) % 24) * HOUR + float(r.uniform(0, 1800))
        return np.sort(start + r.uniform(0, max(60.0, n * 0.05), n))
    if c.habit == "heavy":  # all day, a dip at night
        hours = np.where(r.random(n) < 0.8, r.uniform(7, 21, n), r.uniform(0, 24, n))
    else:
        hours = r.normal(13.5, 3.0, n) % 24
    return np.sort(base + ((hours - tz) % 24) * HOUR + r.uniform(0, 60, n))


def _callers(w: _Writer, drift_from: float | None) -> None:
    spec, v = w.spec, w.victim
    for c in spec.callers:
        crng = np.random.default_rng(zlib.crc32(f"{spec.seed}/{c.name}".encode()))
        repeat_set = v.natural(crng, 12, c.noise, c.offset) if c.habit == "repeating" else None
        for day in range(spec.days):
            ts = _caller_times(w, c, day)
            n = len(ts)
            if n == 0:
                continue
            if repeat_set is not None:
                x = repeat_set[w.np.integers(len(repeat_set), size=n)]
            else:
                x = v.natural(w.np, n, c.noise, c.offset)
            if c.habit == "retrying":  # some requests are sent again a few seconds later
                again = w.np.random(n) < 0.15
                ts = np.concatenate([ts, ts[again] + w.np.uniform(1, 8, int(again.sum()))])
                x = np.concatenate([x, x[again]])
            if drift_from is not None:
                late = ts >= drift_from
                if late.any():
                    w.inference(ts[~late], c.name, x[~late], label_rate=spec.label_rate)
                    w.inference(ts[late], c.name, v.drifted(w.np, int(late.sum())),
                                scenario="input_drift", label_rate=spec.label_rate)
                    continue
            w.inference(ts, c.name, x, label_rate=spec.label_rate)


def _paced(w: _Writer, start: float, n: int, gap: float) -> Any:
    """Times of ``n`` attack queries: every ``gap`` s, or like the heaviest benign caller."""
    if not w.spec.stealth:
        return start + np.cumsum(w.np.exponential(gap, n))
    heavy = max(w.spec.callers, key=lambda c: c.per_day)
    per_s = heavy.per_day * 0.8 / (14 * HOUR)  # its daytime rate
    return start + np.cumsum(w.np.exponential(1.0 / max(per_s, 1e-3), n))


def _boundary_search(w: _Writer, rounds: int) -> Any:
    """HopSkipJump-like probes: binary searches toward an input, probes at the edge."""
    v, r = w.victim, w.np
    x_orig = v.natural(r, 1)[0]
    cls = v.decide(x_orig)
    candidates = v.natural(r, 64)
    other = [x for x in candidates if v.decide(x) != cls]
    x_adv = other[0] if other else v.box(r, 1)[0]
    step = v.scale() * 0.02
    rows: list[Any] = []
    for _ in range(rounds):
        lo, hi = 0.0, 1.0
        for _ in range(10):
            mid = (lo + hi) / 2
            x = x_orig + mid * (x_adv - x_orig)
            rows.append(x)
            lo, hi = (mid, hi) if v.decide(x) == cls else (lo, mid)
        edge = x_orig + hi * (x_adv - x_orig)
        for _ in range(4):
            rows.append(edge + r.normal(0, 1, edge.shape) * step)
        closer = edge + 0.1 * (x_orig - edge)
        x_adv = closer if v.decide(closer) != cls else edge
    return np.array(rows)


def _attacks(w: _Writer, day0: float) -> dict[str, Scenario]:
    spec, rng, r, v = w.spec, w.rng, w.np, w.victim
    out: dict[str, Scenario] = {}
    humans = list(spec.people)
    rng.shuffle(humans)
    pick = iter(humans * 2)
    slots = iter(rng.sample(range(1, 22), len(spec.attacks)))

    def plant(name: str, entity_type: str, entity: str, what: str) -> float:
        at = day0 + next(slots) * HOUR + rng.uniform(0, 1800)
        out[name] = Scenario(name, what, entity_type, entity, _KINDS[name], at - day0)
        return float(at)

    for name in spec.attacks:
        if name == "model_extraction":
            n = rng.randint(2000, 5000)
            at = plant(name, "principal", "partner-x", f"{n} synthetic queries over the input box")
            w.inference(_paced(w, at, n, 1.0), "partner-x", v.box(r, n), scenario=name)
        elif name == "knockoff_extraction":
            n = rng.randint(1500, 3000)
            at = plant(name, "principal", "thief-k", f"{n} natural class-balanced queries")
            w.inference(_paced(w, at, n, 1.0), "thief-k", v.thief_pool(r, n), scenario=name)
        elif name == "adversarial_probing":
            x = _boundary_search(w, rng.randint(25, 50))
            at = plant(name, "principal", "eve-probe", f"{len(x)} boundary-search queries")
            w.inference(_paced(w, at, len(x), 1.5), "eve-probe", x, scenario=name)
        elif name == "query_flood":
            c = rng.choice([c for c in spec.callers if c.habit in ("interactive", "noisy")]
                           or list(spec.callers))
            at = plant(name, "principal", c.name, "a regular caller sends 2,500 queries in 3 min")
            w.inference(at + np.arange(2500) * 0.072, c.name, v.natural(r, 2500, c.noise,
                                                                        c.offset), scenario=name)
        elif name == "exfiltration":
            p = next(pick)
            targets = list(spec.datasets)
            rng.shuffle(targets)
            targets = targets[:max(6, min(40, len(targets)))]
            next(slots)
            at = day0 + (3 - _PLACES[p.country][3]) % 24 * HOUR  # 03:00 local
            out[name] = Scenario(name, f"reads {len(targets)} datasets at 03:00 local",
                                 "principal", p.name, _KINDS[name], at - day0)
            for i, ds in enumerate(targets):
                size = int(p.read_bytes * rng.uniform(30, 80))
                w.audit(at + i * 40, p.name, "dataset.read", ds, bytes=size, records=size // 350,
                        resource_type="dataset", source_ip=f"{_PLACES[p.country][4]}.20",
                        scenario=name)
        elif name == "training_write":
            p = next(pick)
            ds = spec.pipelines[0].dataset
            at = plant(name, "principal", p.name, f"a person writes 200k rows into {ds}")
            w.audit(at, p.name, "dataset.write", ds, bytes=int(8e7), records=200_000,
                    resource_type="dataset", scenario=name)
        elif name == "model_tampering":
            p = next(pick)
            at = plant(name, "principal", p.name, "overwrites the serving model outside a run")
            w.audit(at, p.name, "model.update", f"model:{spec.models[0]}:{spec.versions}",
                    resource_type="model", scenario=name)
        elif name == "impossible_travel":
            p = next(pick)
            far = max(_PLACES, key=lambda c: abs(_PLACES[c][2] - _PLACES[p.country][2]))
            at = plant(name, "principal", p.name, f"logs in from {p.country}, then {far}")
            w.access(at, p.name, p.country, scenario=name)
            w.access(at + 1800, p.name, far, ip="203.0.113.50", scenario=name)
        elif name == "brute_force":
            p = next(pick)
            at = plant(name, "principal", p.name, "30 failed logins from one IP, then success")
            for i in range(30):
                w.access(at + i * 8, p.name, p.country, "failure", method="password",
                         ip="198.51.100.77", scenario=name)
            w.access(at + 250, p.name, p.country, method="password", ip="198.51.100.77",
                     scenario=name)
        elif name == "self_grant":
            who = spec.pipelines[0].etl
            at = plant(name, "principal", who, f"{who} grants itself the admin role")
            w.audit(at, who, "role.assign", f"role:admin:{who}", resource_type="role",
                    scenario=name)
        elif name == "input_drift":
            plant(name, "model", v.model_id, "the victim's inputs change upstream")
    return out


def world_events(spec: WorldSpec) -> World:
    """Generate the traffic of ``spec`` (deterministic), attacks on the last day."""
    w = _Writer(spec)
    day0 = T0 + (spec.days - 1) * DAY
    scenarios = _attacks(w, day0)
    drift = scenarios.get("input_drift")
    _people(w)
    _services(w)
    _callers(w, day0 + drift.start_offset_s if drift is not None else None)
    w.events.sort(key=lambda e: e.ts)
    roles: dict[str, str] = {}
    for p in spec.people:
        roles[p.name] = f"person:{p.role}"
    for pl in spec.pipelines:
        roles.setdefault(pl.orchestrator, "svc:orchestrator")
        roles.setdefault(pl.etl, "svc:etl")
        roles.setdefault(pl.trainer, "svc:trainer")
    roles.setdefault("svc-ingest", "svc:ingest")
    roles["svc-monitor"] = "svc:monitor"
    for c in spec.callers:
        roles[c.name] = f"caller:{c.habit}"
    for m in spec.models:
        roles[m] = "model"
    return World(spec, w.events, scenarios, roles)
