"""Writes the StreamAlert-style fixtures of the access detectors (run from the repo root).

``python tests/access/make_fixtures.py`` rewrites, for each detector,
``tests/fixtures/access/<name>.positive.jsonl`` and ``<name>.negative.jsonl``
(one event per line, ``event_type`` set) and ``<name>.expected.json`` (the
findings the positive file must produce, by line; the negative file must
produce none). Each scenario is a short history that warms the detector up at
its default settings, then the attack (positive) or harmless near-misses
(negative). Expected findings are written from the scenario's construction,
never from a detector's output; ``test_fixtures.py`` checks the files on disk
are what this script makes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

DIR = Path(__file__).resolve().parents[1] / "fixtures" / "access"
T0 = 1_767_571_200  # Monday 2026-01-05 00:00 UTC
DAY = 86400
HOUR = 3600

Event = dict[str, Any]


def audit(
    ts: float, actor: str, action: str, resource: str, outcome: str = "success", **extra: Any
) -> Event:
    return {
        "event_type": "audit",
        "ts": round(ts, 3),
        "actor": actor,
        "action": action,
        "resource": resource,
        "outcome": outcome,
        **extra,
    }


def access(ts: float, principal: str, action: str, outcome: str = "success", **extra: Any) -> Event:
    return {
        "event_type": "access",
        "ts": round(ts, 3),
        "principal": principal,
        "action": action,
        "outcome": outcome,
        **extra,
    }


def geo(country: str, city: str, lat: float, lon: float) -> dict[str, Any]:
    return {"country": country, "city": city, "lat": lat, "lon": lon}


LONDON = geo("GB", "London", 51.51, -0.13)
MANCHESTER = geo("GB", "Manchester", 53.48, -2.24)
NEW_YORK = geo("US", "New York", 40.71, -74.01)
SINGAPORE = geo("SG", "Singapore", 1.35, 103.82)
BERLIN = geo("DE", "Berlin", 52.52, 13.40)
PARIS = geo("FR", "Paris", 48.86, 2.35)
MOSCOW = geo("RU", "Moscow", 55.76, 37.62)
FRANKFURT = geo("DE", "Frankfurt", 50.11, 8.68)


class Scenario:
    """History shared by both files, then attack lines and near-miss lines."""

    def __init__(self, name: str, detector: str) -> None:
        self.name = name
        self.detector = detector
        self.history: list[Event] = []
        self.attack: list[Event] = []
        self.near_miss: list[Event] = []
        self.expected: list[tuple[int, dict[str, Any]]] = []  # (attack index, expectation)

    def expect(self, event: Event, kind: str, severity: str, entity: str, **evidence: Any) -> None:
        self.attack.append(event)
        self.expected.append(
            (
                len(self.attack) - 1,
                {
                    "kind": kind,
                    "severity": severity,
                    "entity": {"type": "principal", "id": entity},
                    "evidence": evidence,
                },
            )
        )

    def files(self) -> dict[str, str]:
        history = sorted(self.history, key=lambda e: e["ts"])
        last = history[-1]["ts"]
        assert all(e["ts"] > last for e in self.attack + self.near_miss), self.name
        assert self.attack == sorted(self.attack, key=lambda e: e["ts"]), self.name
        assert self.near_miss == sorted(self.near_miss, key=lambda e: e["ts"]), self.name

        def jsonl(events: list[Event]) -> str:
            return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)

        expected = {
            "detector": self.detector,
            "positive": f"{self.name}.positive.jsonl",
            "negative": f"{self.name}.negative.jsonl",
            "findings": [
                {"line": len(history) + index + 1, **what} for index, what in self.expected
            ],
        }
        return {
            f"{self.name}.positive.jsonl": jsonl(history + self.attack),
            f"{self.name}.negative.jsonl": jsonl(history + self.near_miss),
            f"{self.name}.expected.json": json.dumps(expected, indent=2) + "\n",
        }


def workdays(days: int) -> list[int]:
    return [d for d in range(days) if d % 7 < 5]


def office_reads(
    s: Scenario,
    rng: random.Random,
    who: str,
    datasets: list[str],
    days: int,
    per_hour: int = 4,
    size: float = 2e7,
    start: int = 9,
    end: int = 17,
    lon: float | None = None,
    place: dict[str, Any] | None = None,
) -> None:
    """A person's working days: a morning login, then reads through the day (UTC hours)."""
    for d in workdays(days):
        day = T0 + d * DAY
        s.history.append(
            access(
                day + start * HOUR - 300,
                who,
                "login",
                source_ip="10.1.1.7",
                geo=place or LONDON,
                auth_method="sso",
                user_agent="laptop-1",
            )
        )
        for h in range(start, end):
            for k in range(per_hour):
                nbytes = int(size * rng.uniform(0.5, 1.5))
                s.history.append(
                    audit(
                        day + h * HOUR + k * 3600 / per_hour + rng.uniform(0, 60),
                        who,
                        "dataset.read",
                        rng.choice(datasets),
                        bytes=nbytes,
                        records=nbytes // 400,
                        resource_type="dataset",
                    )
                )
    del lon


def exfiltration() -> Scenario:
    s = Scenario("exfiltration", "access.exfiltration")
    rng = random.Random(1)
    office_reads(s, rng, "dana", ["dataset:sales-eu", "dataset:sales-us", "dataset:ref"], 12)
    day = T0 + 14 * DAY  # a Monday after the history
    for i in range(6):
        event = audit(
            day + 10 * HOUR + i * 120,
            "dana",
            "dataset.export",
            f"dataset:crm-{i}",
            bytes=5_000_000_000,
            records=9_000_000,
            resource_type="dataset",
        )
        if i == 0:
            s.expect(event, "exfiltration", "high", "dana", metric="bytes")
        else:
            s.attack.append(event)
    # Near misses: a month-end style busy hour (3x reads, 2x sizes).
    for k in range(12):
        s.near_miss.append(
            audit(
                day + 10 * HOUR + k * 300,
                "dana",
                "dataset.read",
                "dataset:sales-eu",
                bytes=40_000_000,
                records=100_000,
                resource_type="dataset",
            )
        )
    return s


def unusual_hours() -> Scenario:
    s = Scenario("unusual_hours", "access.unusual_hours")
    rng = random.Random(2)
    # Omar works 8-16 UTC in Berlin (09-17 local solar time).
    office_reads(
        s, rng, "omar", ["dataset:a", "dataset:b"], 12, per_hour=2, start=8, end=16, place=BERLIN
    )
    night = T0 + 14 * DAY + 2 * HOUR  # 03h local
    s.attack.append(
        access(
            night,
            "omar",
            "login",
            source_ip="10.1.1.7",
            geo=BERLIN,
            auth_method="sso",
            user_agent="laptop-1",
        )
    )
    s.attack.append(audit(night + 60, "omar", "dataset.read", "dataset:a", bytes=10**6))
    s.expect(
        audit(night + 120, "omar", "dataset.read", "dataset:b", bytes=10**6),
        "exfiltration",
        "medium",
        "omar",
    )
    # Near miss: Omar flies to New York and works 9-17 there (14-22 UTC).
    for d in (14, 15):
        day = T0 + d * DAY
        s.near_miss.append(
            access(
                day + 14 * HOUR - 300,
                "omar",
                "login",
                source_ip="192.0.2.4",
                geo=NEW_YORK,
                auth_method="sso",
                user_agent="laptop-1",
            )
        )
        for h in range(14, 22):
            for k in range(2):
                s.near_miss.append(
                    audit(
                        day + h * HOUR + k * 1800, "omar", "dataset.read", "dataset:a", bytes=10**6
                    )
                )
    return s


def impossible_travel() -> Scenario:
    s = Scenario("impossible_travel", "access.impossible_travel")
    for d in range(6):
        s.history.append(
            access(
                T0 + d * DAY + 9 * HOUR,
                "lee",
                "login",
                source_ip="10.2.0.4",
                geo=LONDON,
                auth_method="sso",
            )
        )
    day = T0 + 7 * DAY
    s.attack.append(
        access(day + 9 * HOUR, "lee", "login", source_ip="10.2.0.4", geo=LONDON, auth_method="sso")
    )
    s.expect(
        access(
            day + 9 * HOUR + 40 * 60,
            "lee",
            "token.use",
            source_ip="203.0.113.80",
            geo=SINGAPORE,
            auth_method="token",
        ),
        "suspicious_access",
        "high",
        "lee",
    )
    # Near misses: Manchester ten minutes later (geolocation error), then a real flight.
    s.near_miss.append(
        access(day + 9 * HOUR, "lee", "login", source_ip="10.2.0.4", geo=LONDON, auth_method="sso")
    )
    s.near_miss.append(
        access(
            day + 9 * HOUR + 600,
            "lee",
            "login",
            source_ip="10.9.0.4",
            geo=MANCHESTER,
            auth_method="sso",
        )
    )
    s.near_miss.append(
        access(
            day + 22 * HOUR, "lee", "login", source_ip="192.0.2.9", geo=NEW_YORK, auth_method="sso"
        )
    )
    return s


def auth_failure_burst() -> Scenario:
    s = Scenario("auth_failure_burst", "access.auth_failure_burst")
    rng = random.Random(4)
    for d in range(7):
        t = T0 + d * DAY + 8 * HOUR
        for _ in range(rng.randint(0, 2)):
            s.history.append(access(t, "kim", "login", "failure", auth_method="password"))
            t += 20
        s.history.append(access(t, "kim", "login", auth_method="password"))
        s.history.append(audit(t + 100, "ned", "dataset.read", "dataset:ned-own"))
    day = T0 + 8 * DAY + 3 * HOUR
    for i in range(15):
        s.attack.append(
            access(
                day + i * 10,
                "kim",
                "login",
                "failure",
                source_ip="198.51.100.66",
                auth_method="password",
            )
        )
    s.expect(
        access(day + 160, "kim", "login", source_ip="198.51.100.66", auth_method="password"),
        "suspicious_access",
        "high",
        "kim",
        channel="authentication",
    )
    for i in range(8):
        s.attack.append(
            audit(day + 300 + i * 15, "ned", "dataset.read", f"dataset:fin-{i}", "denied")
        )
    s.expect(
        audit(day + 450, "ned", "dataset.read", "dataset:fin-7"),
        "suspicious_access",
        "medium",
        "ned",
        channel="authorization",
    )
    # Near misses: three typos; eight failures spread over two hours; few denials.
    for i in range(3):
        s.near_miss.append(access(day + i * 15, "kim", "login", "failure", auth_method="password"))
    s.near_miss.append(access(day + 60, "kim", "login", auth_method="password"))
    for i in range(8):
        s.near_miss.append(
            access(day + 1000 + i * 900, "kim", "login", "failure", auth_method="password")
        )
    s.near_miss.append(access(day + 1000 + 8 * 900, "kim", "login", auth_method="password"))
    s.near_miss.append(audit(day + 9000, "ned", "dataset.read", "dataset:fin-1", "denied"))
    s.near_miss.append(audit(day + 9100, "ned", "dataset.read", "dataset:fin-1"))
    return s


def new_location() -> Scenario:
    s = Scenario("new_location", "access.new_location")
    t, end = T0, T0 + 5 * DAY
    while t < end:
        s.history.append(
            access(
                t,
                "svc-etl",
                "token.use",
                source_ip="172.20.1.5",
                geo=FRANKFURT,
                auth_method="token",
                user_agent="etl/2.0",
            )
        )
        t += 1200
    for d in workdays(7):
        for k in range(8):
            s.history.append(
                access(
                    T0 + d * DAY + (8 + k) * HOUR,
                    "mia",
                    "login",
                    source_ip="10.3.0.9",
                    geo=PARIS,
                    auth_method="sso",
                    user_agent="laptop-mia",
                )
            )
    day = T0 + 7 * DAY
    s.expect(
        access(
            day + 3600,
            "svc-etl",
            "token.use",
            source_ip="203.0.113.50",
            geo=FRANKFURT,
            auth_method="token",
            user_agent="etl/2.0",
        ),
        "suspicious_access",
        "medium",
        "svc-etl",
        rule="new_network",
    )
    s.expect(
        access(
            day + 4 * 3600,
            "mia",
            "login",
            source_ip="198.51.100.23",
            geo=MOSCOW,
            auth_method="password",
            user_agent="python-requests/2.31",
        ),
        "suspicious_access",
        "high",
        "mia",
        rule="login_new_country",
    )
    # Near misses: same /24 for the service; Mia travels with her laptop and uses her CLI.
    s.near_miss.append(
        access(
            day + 3600,
            "svc-etl",
            "token.use",
            source_ip="172.20.1.77",
            geo=FRANKFURT,
            auth_method="token",
            user_agent="etl/2.0",
        )
    )
    s.near_miss.append(
        access(
            day + 15 * 3600,
            "mia",
            "login",
            source_ip="192.0.2.40",
            geo=NEW_YORK,
            auth_method="sso",
            user_agent="laptop-mia",
        )
    )
    s.near_miss.append(
        access(
            day + 15 * 3600 + 600,
            "mia",
            "token.use",
            source_ip="192.0.2.40",
            geo=NEW_YORK,
            auth_method="token",
            user_agent="mlctl/3.2",
        )
    )
    return s


def rare_resource() -> Scenario:
    s = Scenario("rare_resource", "access.rare_resource")
    rng = random.Random(6)
    for d in range(6):
        day = T0 + d * DAY
        for who in ("hr-bot", "payroll"):
            for k in range(3):
                s.history.append(
                    audit(
                        day + (2 + k) * HOUR + rng.uniform(0, 60),
                        who,
                        "dataset.read",
                        "dataset:salaries",
                    )
                )
        for k in range(5):
            s.history.append(
                audit(
                    day + 12 * HOUR + k * 60, f"analyst-{k}", "dataset.read", "dataset:ref-popular"
                )
            )
        for k in range(100):
            s.history.append(
                audit(day + 8 * HOUR + k * 250, "ann", "dataset.read", f"dataset:team-{k % 3}")
            )
    day = T0 + 6 * DAY + 9 * HOUR
    s.expect(
        audit(day, "ann", "dataset.read", "dataset:salaries"), "suspicious_access", "low", "ann"
    )
    # Near misses: a popular dataset; a dataset created today.
    s.near_miss.append(audit(day, "ann", "dataset.read", "dataset:ref-popular"))
    s.near_miss.append(audit(day + 60, "svc-pipeline", "dataset.write", "dataset:new-today"))
    s.near_miss.append(audit(day + 7200, "ann", "dataset.read", "dataset:new-today"))
    return s


def privilege_grant() -> Scenario:
    s = Scenario("privilege_grant", "access.privilege_grant")
    for d in range(5):
        day = T0 + d * DAY
        for k, grantee in enumerate(("bob", "carol")):
            s.history.append(
                audit(
                    day + (9 + k) * HOUR,
                    "it-admin",
                    "role.assign",
                    f"role:reader-team{k}",
                    resource_type="role",
                    attributes={"grantee": grantee},
                )
            )
        s.history.append(audit(day + 11 * HOUR, "mallory", "dataset.read", "dataset:x"))
        s.history.append(audit(day + 12 * HOUR, "dev-lead", "dataset.read", "dataset:y"))
    day = T0 + 5 * DAY
    s.expect(
        audit(
            day + 10 * HOUR, "mallory", "role.assign", "role:admin:mallory", resource_type="role"
        ),
        "suspicious_access",
        "critical",
        "mallory",
        rule="self_grant",
    )
    s.expect(
        audit(
            day + 11 * HOUR,
            "dev-lead",
            "role.assign",
            "role:writer-models",
            resource_type="role",
            attributes={"grantee": "dave"},
        ),
        "suspicious_access",
        "medium",
        "dev-lead",
        rule="first_grant_by_actor",
    )
    # Near miss: the administrator's routine grants.
    s.near_miss.append(
        audit(
            day + 9 * HOUR,
            "it-admin",
            "role.assign",
            "role:admin-team3",
            resource_type="role",
            attributes={"grantee": "erin"},
        )
    )
    return s


def training_write() -> Scenario:
    s = Scenario("training_write", "access.training_write")
    rng = random.Random(8)
    for d in range(7):
        t = T0 + d * DAY + 2 * HOUR
        for _ in range(4):
            nbytes = int(2e8 * rng.uniform(0.8, 1.2))
            s.history.append(
                audit(
                    t,
                    "svc-pipeline",
                    "dataset.write",
                    "dataset:train-fraud",
                    bytes=nbytes,
                    records=nbytes // 500,
                    resource_type="dataset",
                )
            )
            t += 300
    day = T0 + 7 * DAY
    s.expect(
        audit(
            day + 1 * HOUR,
            "intern",
            "dataset.write",
            "dataset:train-fraud",
            bytes=3_000_000,
            records=6_000,
            resource_type="dataset",
        ),
        "data_poisoning",
        "medium",
        "intern",
        rule="new_writer",
    )
    s.expect(
        audit(
            day + 2 * HOUR,
            "svc-pipeline",
            "dataset.write",
            "dataset:train-fraud",
            bytes=20_000_000_000,
            records=40_000_000,
            resource_type="dataset",
        ),
        "data_poisoning",
        "high",
        "svc-pipeline",
        rule="volume",
    )
    # Near misses: a 1.5x bigger nightly write; the intern writes its own scratch dataset.
    s.near_miss.append(
        audit(
            day + 1 * HOUR,
            "intern",
            "dataset.write",
            "dataset:scratch-intern",
            bytes=3_000_000,
            resource_type="dataset",
        )
    )
    for k in range(4):
        s.near_miss.append(
            audit(
                day + 2 * HOUR + k * 300,
                "svc-pipeline",
                "dataset.write",
                "dataset:train-fraud",
                bytes=300_000_000,
                records=600_000,
                resource_type="dataset",
            )
        )
    return s


def model_change() -> Scenario:
    s = Scenario("model_change", "access.model_change")
    for d in range(5):
        t = T0 + d * DAY + 1 * HOUR
        run = f"run-{d}"
        s.history.append(
            audit(
                t,
                "svc-train",
                "pipeline.run",
                "pipeline:fraud-nightly",
                attributes={"run_id": run, "status": "started"},
            )
        )
        s.history.append(
            audit(
                t + 5400,
                "svc-train",
                "model.register",
                f"model:fraud:{d + 1}",
                resource_type="model",
                attributes={"run_id": run},
            )
        )
        s.history.append(
            audit(
                t + 5500,
                "svc-train",
                "pipeline.run",
                "pipeline:fraud-nightly",
                attributes={"run_id": run, "status": "succeeded"},
            )
        )
    day = T0 + 4 * DAY
    s.expect(
        audit(
            day + 14 * HOUR,
            "dev",
            "model.update",
            "model:fraud:5",
            resource_type="model",
            bytes=310_000_000,
        ),
        "model_tampering",
        "critical",
        "dev",
    )
    s.expect(
        audit(
            day + 16 * HOUR, "svc-train", "model.register", "model:fraud:6", resource_type="model"
        ),
        "model_tampering",
        "high",
        "svc-train",
    )
    # Near misses: a late register tied to its run by id; a new run, then its register.
    s.near_miss.append(
        audit(
            day + 9 * HOUR,
            "svc-train",
            "model.register",
            "model:fraud:5b",
            resource_type="model",
            attributes={"run_id": "run-4"},
        )
    )
    s.near_miss.append(
        audit(
            day + 20 * HOUR,
            "svc-train",
            "pipeline.run",
            "pipeline:fraud-adhoc",
            attributes={"run_id": "run-x"},
        )
    )
    s.near_miss.append(
        audit(
            day + 21 * HOUR, "svc-train", "model.register", "model:fraud:7", resource_type="model"
        )
    )
    return s


def deletion() -> Scenario:
    s = Scenario("deletion", "access.deletion")
    for d in range(6):
        for j in range(4):
            s.history.append(
                audit(
                    T0 + d * DAY + 3 * HOUR + j * 30,
                    "svc-retention",
                    "dataset.delete",
                    f"dataset:logs-{d}-{j}",
                )
            )
        s.history.append(
            audit(T0 + d * DAY + 10 * HOUR, "carol", "dataset.read", "dataset:train-fraud")
        )
    day = T0 + 6 * DAY
    s.expect(
        audit(day + 1 * HOUR, "carol", "dataset.delete", "dataset:train-fraud"),
        "data_poisoning",
        "medium",
        "carol",
        rule="first_delete",
    )
    # Usual 4 a night, spread 0: the limit is max(5 x 4, e^(ln 5 + 5 x 0.25) - 1, 10) = 20.
    for j in range(25):
        event = audit(
            day + 3 * HOUR + j * 10, "svc-retention", "dataset.delete", f"dataset:train-{j}"
        )
        if j == 20:
            s.expect(event, "data_poisoning", "high", "svc-retention", rule="burst")
        else:
            s.attack.append(event)
    # Near miss: a slightly bigger nightly cleanup (6 instead of 4).
    for j in range(6):
        s.near_miss.append(
            audit(day + 3 * HOUR + j * 30, "svc-retention", "dataset.delete", f"dataset:logs-6-{j}")
        )
    return s


SCENARIOS: tuple[Callable[[], Scenario], ...] = (
    exfiltration,
    unusual_hours,
    impossible_travel,
    auth_failure_burst,
    new_location,
    rare_resource,
    privilege_grant,
    training_write,
    model_change,
    deletion,
)


def build() -> dict[str, str]:
    """File name -> content, for every scenario."""
    out: dict[str, str] = {}
    for make in SCENARIOS:
        out.update(make().files())
    return out


def main() -> None:
    DIR.mkdir(parents=True, exist_ok=True)
    for name, content in build().items():
        (DIR / name).write_text(content)
    print(f"wrote {len(SCENARIOS) * 3} files to {DIR}")


if __name__ == "__main__":
    main()
