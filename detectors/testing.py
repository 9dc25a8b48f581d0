"""Helpers to feed events to detectors and capture findings (as structlog.testing).

>>> from detectors.abuse.volume import PrincipalRateDetector
>>> findings = feed(PrincipalRateDetector(), mixed_stream(n=500, seed=1))
>>> isinstance(findings, list)
True
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

from detectors.base import Detector
from detectors.events import AccessEvent, AuditEvent, Event, InferenceEvent
from detectors.events import Geo as _Geo
from detectors.findings import Finding, Source

__all__ = ["feed", "mixed_stream", "sourced"]

_TOPIC = {InferenceEvent: "ml.inference", AuditEvent: "ml.audit", AccessEvent: "ml.access"}


def sourced(events: Iterable[Event], partition: int = 0) -> Iterator[tuple[Event, Source]]:
    """Pairs each event with a Kafka-like source position (offset per topic)."""
    offsets: dict[str, int] = {}
    for event in events:
        topic = _TOPIC[type(event)]
        offset = offsets.get(topic, 0)
        offsets[topic] = offset + 1
        yield event, Source(topic, partition, offset)


def feed(detector: Detector, events: Iterable[Event], partition: int = 0) -> list[Finding]:
    """All findings ``detector`` returns over ``events`` (kinds it does not take are skipped)."""
    out: list[Finding] = []
    for event, source in sourced(events, partition):
        if type(event).__struct_config__.tag not in detector.event_types:
            continue
        found = detector.process(event, source)
        if found:
            out.extend(found)
    return out


def mixed_stream(
    n: int = 3000, seed: int = 0, t0: float = 1_767_225_600.0, minimal: bool = False
) -> list[Event]:
    """A benign-looking mix of the three kinds: a few models, principals and resources.

    ``minimal`` leaves out every optional field, to check detectors tolerate that.
    Half of the inference events use list features, half dict features.
    """
    rng = random.Random(seed)
    principals = [f"user-{i}" for i in range(12)] + ["svc-batch", "svc-api"]
    datasets = [f"dataset:d{i}" for i in range(6)]
    countries = [("DE", 52.5, 13.4), ("FR", 48.9, 2.35), ("US", 40.7, -74.0)]
    home = {p: countries[i % len(countries)] for i, p in enumerate(principals)}
    events: list[Event] = []
    t = t0
    for i in range(n):
        t += rng.expovariate(1 / 2.0)
        who = rng.choice(principals)
        roll = rng.random()
        extra: dict[str, Any] = {}
        if roll < 0.7:
            model = rng.choice(["fraud", "churn"])
            feats = [rng.gauss(0, 1) for _ in range(6)]
            p1 = 1 / (1 + pow(2.718281828, -(feats[0] + feats[1])))
            pred = int(p1 > 0.5)
            features: Any = feats if i % 2 else {f"f{j}": v for j, v in enumerate(feats)}
            if not minimal:
                extra = {
                    "model_version": "1",
                    "source_ip": f"10.0.{hash(who) % 200}.{rng.randint(1, 9)}",
                    "probabilities": [1 - p1, p1],
                    "latency_ms": rng.uniform(1, 20),
                    "attributes": {"unknown": rng.random()},
                }
                if rng.random() < 0.2:
                    extra["label"] = pred if rng.random() < 0.9 else 1 - pred
            events.append(
                InferenceEvent(
                    ts=t, model_id=model, request_id=f"r{i}", principal=who,
                    features=features, prediction=pred, **extra,
                )
            )
        elif roll < 0.85:
            action = rng.choice(["dataset.read", "dataset.read", "model.download", "dataset.write"])
            if not minimal:
                extra = {"bytes": rng.randint(1_000, 5_000_000), "records": rng.randint(1, 5000),
                         "source_ip": "10.1.0.1", "resource_type": "dataset"}
            events.append(
                AuditEvent(ts=t, actor=who, action=action, resource=rng.choice(datasets),
                           outcome="success" if rng.random() < 0.97 else "denied", **extra)
            )
        else:
            country, lat, lon = home[who]
            if not minimal:
                extra = {"source_ip": f"203.0.113.{hash(who) % 250}", "auth_method": "sso",
                         "geo": _Geo(country=country, city="x", lat=lat, lon=lon)}
            events.append(
                AccessEvent(ts=t, principal=who, action="login",
                            outcome="success" if rng.random() < 0.95 else "failure", **extra)
            )
    return events
