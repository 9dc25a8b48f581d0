"""Built-in traffic: benign days of an ML platform plus labelled attack scenarios.

Used by ``mlwatchd demo`` (and the basis of ``mlwatchd simulate``). Seeded and
repeatable. Benign traffic has rhythms: people work 9-18 in their own time
zone on weekdays, pipelines run nightly, API callers query the models at their
own steady rates, a few users mistype passwords or travel. Each attack event
carries its scenario's name as ground truth; :data:`SCENARIOS` says which
entity a responder should see a finding about.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from daemon.lab.scenarios import (
    ALL_SCENARIOS,
    ART_SCENARIOS,
    DAY,
    HOUR,
    SCENARIOS,
    T0,
    Scenario,
    SimEvent,
)

if TYPE_CHECKING:
    from daemon.sections_kafka import KafkaSettings

__all__ = ["ALL_SCENARIOS", "ART_SCENARIOS", "SCENARIOS", "Progress", "Scenario", "SimEvent",
           "encode", "generate", "run_simulate", "simulate"]

_PLACES: Final = {
    "DE": ("Berlin", 52.52, 13.40, 1.0, "198.18.1"),
    "US": ("New York", 40.71, -74.01, -5.0, "198.18.2"),
    "IN": ("Bengaluru", 12.97, 77.59, 5.5, "198.18.3"),
    "FR": ("Paris", 48.86, 2.35, 1.0, "198.18.4"),
    "BR": ("Sao Paulo", -23.55, -46.63, -3.0, "198.18.5"),
}

_MODELS: Final = {
    # model id -> (number of features, weights of the scoring function)
    "fraud-scorer": (8, (1.6, -1.1, 0.8, 0.0, 0.5, -0.4, 0.0, 0.3)),
    "churn": (6, (1.2, 0.9, -0.7, 0.4, 0.0, -0.3)),
}

_DATASETS: Final = [f"dataset:{name}" for name in (
    "train-2026", "eval-2026", "customers-eu", "customers-us", "transactions-q3",
    "transactions-q4", "support-tickets", "clickstream", "features-v7", "labels-v7",
)] + [f"dataset:archive-{i:02d}" for i in range(40)]


@dataclass
class _Person:
    name: str
    country: str
    read_bytes: float
    datasets: list[str] = field(default_factory=list)
    mistypes: bool = False


def _score(model: str, x: list[float]) -> tuple[int, list[float]]:
    weights = _MODELS[model][1]
    z = sum(w * v for w, v in zip(weights, x, strict=False))
    p1 = 1.0 / (1.0 + math.exp(-z))
    return int(p1 >= 0.5), [round(1 - p1, 4), round(p1, 4)]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.events: list[SimEvent] = []
        self.n = 0

    def inference(self, ts: float, who: str, model: str, x: list[float],
                  scenario: str | None = None, label: bool = False) -> None:
        self.n += 1
        pred, probs = _score(model, x)
        body: dict[str, Any] = {
            "event_type": "inference", "ts": round(ts, 3), "model_id": model,
            "model_version": "3", "request_id": f"req-{self.n:08d}", "principal": who,
            "features": [round(v, 4) for v in x], "prediction": pred, "probabilities": probs,
            "latency_ms": round(self.rng.uniform(2, 25), 1),
        }
        if label:
            body["label"] = pred if self.rng.random() < 0.92 else 1 - pred
        self.events.append(SimEvent(ts, "inference", who, body, scenario))

    def audit(self, ts: float, actor: str, action: str, resource: str, outcome: str = "success",
              scenario: str | None = None, **extra: Any) -> None:
        body = {"event_type": "audit", "ts": round(ts, 3), "actor": actor, "action": action,
                "resource": resource, "outcome": outcome, **extra}
        self.events.append(SimEvent(ts, "audit", actor, body, scenario))

    def access(self, ts: float, who: str, country: str, outcome: str = "success",
               action: str = "login", scenario: str | None = None, ip: str | None = None,
               method: str = "sso") -> None:
        city, lat, lon, _, prefix = _PLACES[country]
        body = {"event_type": "access", "ts": round(ts, 3), "principal": who, "action": action,
                "outcome": outcome, "auth_method": method,
                "source_ip": ip or f"{prefix}.{(sum(map(ord, who)) % 200) + 10}",
                "geo": {"country": country, "city": city, "lat": lat, "lon": lon}}
        self.events.append(SimEvent(ts, "access", who, body, scenario))

    def benign_x(self, model: str, shift: float = 0.0) -> list[float]:
        dims = _MODELS[model][0]
        return [self.rng.gauss(shift if i < 3 else 0.0, 1.0) for i in range(dims)]


def _people(rng: random.Random, count: int) -> list[_Person]:
    names = ["dana.r", "contractor-7", "intern-3", "dev-x", "admin-ops"] + [
        f"user-{i:02d}" for i in range(count)]
    countries = list(_PLACES)
    people = []
    for i, name in enumerate(names):
        country = "DE" if name == "dana.r" else countries[i % len(countries)]
        person = _Person(name, country, read_bytes=rng.lognormvariate(16, 0.6),
                         datasets=rng.sample(_DATASETS[:10], 3), mistypes=(i % 9 == 4))
        people.append(person)
    return people


def _benign_people(b: _Builder, people: list[_Person], days: int) -> None:
    rng = b.rng
    for person in people:
        _, _, _, tz, _ = _PLACES[person.country]
        for day in range(days):
            weekday = (day % 7) < 5
            if not weekday and rng.random() < 0.85:
                continue
            start = T0 + day * DAY + (9.0 - tz) * HOUR + rng.gauss(0, 0.6) * HOUR
            if person.mistypes and rng.random() < 0.3:
                for k in range(rng.randint(1, 2)):
                    b.access(start - 60 + k * 15, person.name, person.country, "failure",
                             method="password")
            b.access(start, person.name, person.country)
            for _ in range(rng.randint(2, 8)):
                t = start + rng.uniform(0.2, 8.5) * HOUR
                size = int(person.read_bytes * rng.lognormvariate(0, 0.5))
                b.audit(t, person.name, "dataset.read", rng.choice(person.datasets),
                        bytes=size, records=max(1, size // 400), resource_type="dataset",
                        source_ip=f"{_PLACES[person.country][4]}.20")


def _benign_services(b: _Builder, days: int) -> None:
    rng = b.rng
    for day in range(days):
        base = T0 + day * DAY
        for hour in range(1, 24, 3):  # the ETL appends a micro-batch every three hours
            b.audit(base + hour * HOUR + rng.uniform(0, 300), "svc-etl", "dataset.write",
                    "dataset:train-2026", bytes=int(2.5e7 * rng.uniform(0.9, 1.1)),
                    records=int(6e3 * rng.uniform(0.9, 1.1)), resource_type="dataset")
        run = f"run-{day:03d}"
        t = base + 2 * HOUR + rng.uniform(0, 120)
        b.audit(t, "svc-train", "pipeline.run", "pipeline:fraud-nightly", run_id=run)
        b.audit(t + 300, "svc-train", "dataset.read", "dataset:train-2026",
                bytes=int(2e8 * (day + 1)), records=int(5e4 * (day + 1)))
        b.audit(t + 1800, "svc-train", "model.register", f"model:fraud-scorer:{day + 3}",
                run_id=run)
        for hour in range(24):
            b.access(base + hour * HOUR + rng.uniform(0, 60), "svc-monitor", "DE",
                     action="token.use", method="token")


def _benign_inference(b: _Builder, days: int, callers: int, total: int,
                      drift_from: float | None) -> None:
    rng = b.rng
    names = ["app-scraper"] + [f"app-{i:02d}" for i in range(callers)]
    end = T0 + days * DAY
    weights = [0.2 + rng.random() for _ in names]
    # Expected events per caller = rate x (13 day hours + 0.3 x 11 night hours) x days.
    minutes = days * (13 + 0.3 * 11) * 60
    for i, who in enumerate(names):
        model = "fraud-scorer" if i % 3 else "churn"
        per_min = total * weights[i] / sum(weights) / minutes
        t = T0 + rng.uniform(0, 600)
        while t < end:
            hour = ((t - T0) % DAY) / HOUR
            # Business traffic dips at night: 30% of the daytime rate.
            rate = per_min * (1.0 if 7 <= hour < 20 else 0.3)
            t += rng.expovariate(rate / 60.0)
            if t >= end:
                break
            drifted = model == "churn" and drift_from is not None and t >= drift_from
            b.inference(t, who, model, b.benign_x(model, 2.0 if drifted else 0.0),
                        scenario="input_drift" if drifted else None,
                        label=rng.random() < 0.1)


def _attacks(b: _Builder, day0: float) -> None:
    rng = b.rng
    at = {s.name: day0 + s.start_offset_s for s in SCENARIOS}
    # Exfiltration: 40 datasets, ~2 GB each, in the middle of the night.
    for i, dataset in enumerate(_DATASETS[10:50]):
        size = int(2e9 * rng.uniform(0.8, 1.2))
        b.audit(at["exfiltration"] + i * 45, "contractor-7", "dataset.read", dataset,
                bytes=size, records=size // 400, resource_type="dataset",
                source_ip="198.18.3.20", scenario="exfiltration")
    # Impossible travel: Berlin, then Sao Paulo half an hour later.
    b.access(at["impossible_travel"], "dana.r", "DE", scenario="impossible_travel")
    b.access(at["impossible_travel"] + 1800, "dana.r", "BR", scenario="impossible_travel",
             ip="203.0.113.50")
    # Query flood from a caller that usually sends about one query a minute.
    for i in range(2500):
        b.inference(at["query_flood"] + i * 0.072, "app-scraper", "fraud-scorer",
                    b.benign_x("fraud-scorer"), scenario="query_flood")
    # Extraction: synthetic queries over the whole input box, one a second for
    # about 80 minutes (published extraction attacks use thousands to tens of
    # thousands of queries).
    for i in range(5000):
        x = [rng.uniform(-4, 4) for _ in range(8)]
        b.inference(at["model_extraction"] + i * 1.0, "partner-acme", "fraud-scorer", x,
                    scenario="model_extraction")
    # Adversarial probing, HopSkipJump-like: binary search between the original
    # input and an adversarial one, probes around the boundary point, then a
    # step that brings the adversarial point closer to the original.
    x_orig = b.benign_x("fraud-scorer")
    cls = _score("fraud-scorer", x_orig)[0]
    x_adv = [-v for v in x_orig]
    t = at["adversarial_probing"]
    for _ in range(40):
        lo, hi = 0.0, 1.0
        for _ in range(10):
            mid = (lo + hi) / 2
            x = [a + mid * (c - a) for a, c in zip(x_orig, x_adv, strict=True)]
            b.inference(t, "eve-research", "fraud-scorer", x, scenario="adversarial_probing")
            t += 1.5
            lo, hi = (mid, hi) if _score("fraud-scorer", x)[0] == cls else (lo, mid)
        edge = [a + hi * (c - a) for a, c in zip(x_orig, x_adv, strict=True)]
        for _ in range(4):  # gradient-estimation probes around the boundary point
            probe = [v + rng.gauss(0, 0.05) for v in edge]
            b.inference(t, "eve-research", "fraud-scorer", probe, scenario="adversarial_probing")
            t += 1.5
        closer = [e + 0.1 * (o - e) + rng.gauss(0, 0.02) for e, o in zip(edge, x_orig,
                                                                        strict=True)]
        x_adv = closer if _score("fraud-scorer", closer)[0] != cls else edge
    # Brute force, then success.
    for i in range(30):
        b.access(at["brute_force"] + i * 8, "admin-ops", "US", "failure", method="password",
                 ip="198.51.100.77", scenario="brute_force")
    b.access(at["brute_force"] + 250, "admin-ops", "US", method="password",
             ip="198.51.100.77", scenario="brute_force")
    # Self-granted admin role.
    b.audit(at["self_grant"], "svc-etl", "role.assign", "role:admin:svc-etl",
            resource_type="role", scenario="self_grant")
    # An intern writes 200k rows into the training set.
    b.audit(at["training_write"], "intern-3", "dataset.write", "dataset:train-2026",
            bytes=int(8e8), records=200_000, resource_type="dataset", scenario="training_write")
    # A developer overwrites a registered model version outside any pipeline run.
    b.audit(at["model_tampering"], "dev-x", "model.update", "model:fraud-scorer:3",
            resource_type="model", scenario="model_tampering")


def generate(seed: int = 7, days: int = 8, people: int = 40, callers: int = 12,
             inference_events: int = 40_000, attacks: bool = True) -> list[SimEvent]:
    """All events of the simulation in time order (attacks on the last day).

    ``days`` starts on a Monday; ``inference_events`` is the expected number of
    benign inference events, spread over ``callers`` API principals.
    """
    b = _Builder(seed)
    attack_day = T0 + (days - 1) * DAY
    drift_from = attack_day + 14 * HOUR if attacks else None
    _benign_people(b, _people(b.rng, people), days)
    _benign_services(b, days)
    _benign_inference(b, days, callers, inference_events, drift_from)
    if attacks:
        _attacks(b, attack_day)
    b.events.sort(key=lambda e: e.ts)
    return b.events


def bad_messages() -> Iterator[tuple[str, bytes | None, bytes]]:
    """(kind, key, value) of malformed messages, one of each kind of fault."""
    yield "inference", b"app-01", b"{not json"
    yield "inference", b"app-01", b"[1, 2, 3]"
    yield "audit", b"svc-etl", b'{"ts": 1793577600, "action": "dataset.read"}'
    yield "access", b"dana.r", b'{"ts": "yesterday", "principal": "dana.r", ' \
        b'"action": "login", "outcome": "success"}'
    yield "inference", b"app-02", b'{"ts": 1793577600, "model_id": "churn", "request_id": ' \
        b'"x", "principal": "app-02", "features": "oops", "prediction": 1}'


# -- mlwatchd simulate -------------------------------------------------------

#: Where an event's ground truth goes: ``attributes`` is free-form in the
#: contract, so the detectors ignore it and ``mlwatchd eval`` reads it.
LABEL: Final = "sim_scenario"


def encode(event: SimEvent) -> bytes:
    """The event as one JSON object (no newline), its label in ``attributes``."""
    import orjson

    body = event.body
    if event.scenario is not None:
        body = {**body, "attributes": {**body.get("attributes", {}), LABEL: event.scenario}}
    return orjson.dumps(body)


class Progress:
    """A one-line progress bar on stderr (a terminal only; silent otherwise)."""

    def __init__(self, total: int, label: str, stream: Any = None) -> None:
        import sys

        self.total = max(total, 1)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = -1

    def update(self, done: int) -> None:
        if not self.live:
            return
        pct = min(100, done * 100 // self.total)
        if pct == self.shown:
            return
        self.shown = pct
        bar = "#" * (pct * 30 // 100)
        self.stream.write(f"\r{self.label} [{bar:<30}] {pct:3d}% {done:,}/{self.total:,}")
        self.stream.flush()

    def close(self) -> None:
        if self.live and self.shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


def simulate(seed: int = 7, days: int = 8, scale: float = 1.0,
             art: bool = False) -> tuple[list[SimEvent], list[str]]:
    """The scenario stream and notes (one line per skipped group of scenarios).

    ``scale`` multiplies the benign population and volume (1.0: 45 people,
    13 API callers, about 40,000 benign inference events over 8 days).
    """
    if days < 1 or scale <= 0:
        raise ValueError("days must be >= 1 and scale > 0")
    events = generate(seed=seed, days=days, people=max(1, round(40 * scale)),
                      callers=max(1, round(12 * scale)),
                      inference_events=max(100, round(40_000 * scale)))
    notes: list[str] = []
    if art:
        from daemon.lab import attacks

        absent = attacks.missing()
        if absent:
            notes.append(f"skipped {', '.join(s.name for s in ART_SCENARIOS)}: "
                         f"{' and '.join(absent)} not installed (pip install "
                         "'mlwatchd[lab]')")
        else:
            events = events + attacks.art_events(seed, days, scale)
            events.sort(key=lambda e: e.ts)
    return events, notes


def produce(events: list[SimEvent], where: KafkaSettings | str, topics: dict[str, str]) -> None:
    """Send ``events`` to ``topics`` (kind -> topic), keyed by principal/actor, in order."""
    from daemon.lab import clients

    producer = clients.producer(where)
    bar = Progress(len(events), "producing")
    for i, event in enumerate(events, 1):
        producer.send(topics[event.kind], key=event.key.encode(), value=encode(event))
        if i % 1000 == 0:
            bar.update(i)
    producer.flush()
    producer.close()
    bar.update(len(events))
    bar.close()


def run_simulate(out: str | None, bootstrap: str | None = None, seed: int = 7,
                 days: int | None = 8, scale: float = 1.0, art: bool = False,
                 config: str | None = None, world: int | None = None) -> int:
    """``mlwatchd simulate``: write JSON Lines to ``out`` or produce to ``bootstrap``.

    ``world``: the seeded world of :mod:`daemon.lab.worlds` instead (``days``
    None: the world's own).
    """
    import sys

    if world is not None:
        from daemon.lab.worlds import draw, world_events

        spec = draw(world, days=days, scale=scale)
        events, seed, days = world_events(spec).events, world, spec.days
        notes: list[str] = []
    else:
        events, notes = simulate(seed=seed, days=8 if days is None else days, scale=scale,
                                 art=art)
    for note in notes:
        print(f"mlwatchd simulate: {note}", file=sys.stderr)
    labels: dict[str, int] = {}
    for e in events:
        if e.scenario is not None:
            labels[e.scenario] = labels.get(e.scenario, 0) + 1
    if bootstrap:
        from daemon.settings import load

        # The config's client settings (security, client id) with these servers.
        settings = load(config)
        t = settings.topics
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
        produce(events, kafka, {"inference": t.inference, "audit": t.audit,
                                "access": t.access})
        where = f"Kafka at {bootstrap}"
    else:
        assert out is not None
        bar = Progress(len(events), "writing")
        with open(out, "wb") as handle:
            for i, event in enumerate(events, 1):
                handle.write(encode(event) + b"\n")
                if i % 2000 == 0:
                    bar.update(i)
        bar.update(len(events))
        bar.close()
        where = out
    print(f"mlwatchd simulate: {len(events):,} events (seed {seed}, {days} days, scale {scale:g}) "
          f"to {where}; {len(labels)} scenarios, {sum(labels.values()):,} attack events",
          file=sys.stderr)
    return 0
